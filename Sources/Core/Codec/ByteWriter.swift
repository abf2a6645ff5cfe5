/// Little-endian appends: the one writer of pvmigrate's encoders (frames, page batches,
/// saved state, boot structures). `set` patches a field already written (a count or a
/// length known only at the end) or fills a fixed-size structure in place.
public struct ByteWriter {
    public var bytes: [UInt8]

    @inlinable public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Starts with `count` zero bytes, for fixed-layout structures filled with `set`.
    @inlinable public init(zeros count: Int) { bytes = [UInt8](repeating: 0, count: count) }

    @inlinable public var count: Int { bytes.count }

    @inlinable
    public mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    @inlinable public mutating func u8(_ value: UInt8) { bytes.append(value) }
    @inlinable public mutating func u16(_ value: UInt16) { integer(value) }
    @inlinable public mutating func u32(_ value: UInt32) { integer(value) }
    @inlinable public mutating func u64(_ value: UInt64) { integer(value) }
    @inlinable public mutating func raw(_ value: some Sequence<UInt8>) { bytes += value }

    /// Appends `values` as consecutive little-endian u64s: one copy of the whole array on a
    /// little-endian host (the saved state's balloon map: one bit per page, 288 KiB at 9 GiB,
    /// written while the guest is paused).
    @inlinable
    public mutating func u64s(_ values: [UInt64]) {
        #if _endian(little)
        values.withUnsafeBytes { bytes.append(contentsOf: $0) }
        #else
        bytes.reserveCapacity(bytes.count + 8 * values.count)
        values.forEach { u64($0) }
        #endif
    }

    /// Overwrites the little-endian `value` at `offset`, which must lie inside what was
    /// written (a programming error otherwise, not input-dependent).
    @inlinable
    public mutating func set<T: FixedWidthInteger & UnsignedInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "ByteWriter.set past the end")
        for i in 0..<MemoryLayout<T>.size { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }
}
