/// Little-endian reads from untrusted bytes — a frame, a page batch, saved state, an ELF
/// image. Every read returns nil instead of running past the end (never a trap), so a
/// decoder turns a short input into its own error with one `guard let`. The one reader
/// of pvmigrate's decoders (the model: swift-nio's `ByteBuffer.readInteger`).
///
/// Generic over the storage so the hot path (a page batch in a raw buffer) reads without a
/// copy; `[UInt8]`, `ArraySlice<UInt8>` and `UnsafeRawBufferPointer` all fit.
public struct ByteReader<Bytes: RandomAccessCollection> where Bytes.Element == UInt8, Bytes.Index == Int {
    public let bytes: Bytes
    @usableFromInline var position = 0
    /// The next byte to read, as an offset from the start of `bytes`.
    @inlinable public var offset: Int { position }

    @inlinable public init(_ bytes: Bytes) { self.bytes = bytes }

    /// Bytes not read yet.
    @inlinable public var remaining: Int { bytes.count - offset }
    @inlinable public var isAtEnd: Bool { remaining == 0 }

    /// The little-endian integer of `size` bytes at `at` (from the start), or nil when it
    /// does not fit. Does not move the reader.
    @inlinable
    public func integer<T: FixedWidthInteger & UnsignedInteger>(at: Int, as: T.Type = T.self) -> T? {
        let size = MemoryLayout<T>.size
        guard at >= 0, at <= bytes.count - size else { return nil }
        // One unaligned load where the storage is contiguous (arrays, slices, raw buffers):
        // the page-batch decoder reads thousands of fields per batch.
        if let value = bytes.withContiguousStorageIfAvailable({ buffer in
            // Sound: [at, at + size) lies inside `buffer` (checked above), and every bit
            // pattern is a valid unsigned integer.
            UnsafeRawBufferPointer(buffer).loadUnaligned(fromByteOffset: at, as: T.self)
        }) {
            return T(littleEndian: value)
        }
        var value: T = 0
        let base = bytes.startIndex + at
        for i in 0..<size { value |= T(bytes[base + i]) << (8 * i) }
        return value
    }

    /// Reads the next little-endian integer.
    @inlinable
    public mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) -> T? {
        guard let value = integer(at: offset, as: T.self) else { return nil }
        position += MemoryLayout<T>.size
        return value
    }

    /// The next byte. One comparison, not `integer`'s two (the delta decoder's varints read
    /// byte by byte): sound because `position` is never negative — it starts at 0, reads and
    /// `skip` only add non-negative counts, `seek` checks.
    @inlinable
    public mutating func u8() -> UInt8? {
        guard position < bytes.count else { return nil }
        let byte = bytes[bytes.startIndex + position]
        position += 1
        return byte
    }
    @inlinable public mutating func u16() -> UInt16? { integer(UInt16.self) }
    @inlinable public mutating func u32() -> UInt32? { integer(UInt32.self) }
    @inlinable public mutating func u64() -> UInt64? { integer(UInt64.self) }

    /// The next `count` little-endian u64s, copied in one go where the storage is contiguous
    /// (the saved state's balloon map); nil when fewer remain.
    @inlinable
    public mutating func u64s(_ count: Int) -> [UInt64]? {
        guard count >= 0, count <= remaining / 8 else { return nil }
        let at = offset
        let copied = bytes.withContiguousStorageIfAvailable { buffer in
            [UInt64](unsafeUninitializedCapacity: count) { words, initialized in
                // Sound: [at, at + 8 × count) lies inside `buffer` (checked above), `words` has
                // room for `count` u64s, and every bit pattern is a valid UInt64.
                UnsafeMutableRawBufferPointer(words).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[at..<(at + 8 * count)]))
                initialized = count
            }
        }
        var words: [UInt64]
        if let copied {
            words = copied
            #if !_endian(little)
            for i in words.indices { words[i] = UInt64(littleEndian: words[i]) }
            #endif
            position += 8 * count
        } else {
            words = []
            words.reserveCapacity(count)
            for _ in 0..<count { words.append(u64()!) } // sound: `remaining` was checked above
        }
        return words
    }

    /// `count` bytes at `at` (from the start), copied; nil when they do not fit. Does not
    /// move the reader.
    @inlinable
    public func bytes(at: Int, count: Int) -> [UInt8]? {
        guard at >= 0, count >= 0, at <= bytes.count - count else { return nil }
        let start = bytes.startIndex + at
        return Array(bytes[start..<(start + count)])
    }

    /// The next `count` bytes, copied; nil when fewer remain.
    @inlinable
    public mutating func bytes(_ count: Int) -> [UInt8]? {
        guard let copy = bytes(at: offset, count: count) else { return nil }
        position += count
        return copy
    }

    /// The rest, copied.
    @inlinable public mutating func rest() -> [UInt8] { bytes(remaining) ?? [] }

    /// Skips `count` bytes; false (and no move) when fewer remain.
    @inlinable
    public mutating func skip(_ count: Int) -> Bool {
        guard count >= 0, count <= remaining else { return false }
        position += count
        return true
    }

    /// Moves to `offset` from the start; false (and no move) when it lies past the end.
    @inlinable
    public mutating func seek(to offset: Int) -> Bool {
        guard offset >= 0, offset <= bytes.count else { return false }
        position = offset
        return true
    }
}

/// Concrete reads from a raw buffer for the hot path (a page batch's table: thousands of
/// fields per batch), fast in unoptimised builds too; the same contract as `integer(at:)`.
extension ByteReader where Bytes == UnsafeRawBufferPointer {
    @inlinable public func u8(at offset: Int) -> UInt8? {
        offset >= 0 && offset < bytes.count ? bytes[offset] : nil
    }

    @inlinable public func u16(at offset: Int) -> UInt16? {
        // Sound: the field lies inside the buffer (checked); any bit pattern is a UInt16.
        guard offset >= 0, offset <= bytes.count - 2 else { return nil }
        return UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inlinable public func u32(at offset: Int) -> UInt32? {
        // Sound: the field lies inside the buffer (checked); any bit pattern is a UInt32.
        guard offset >= 0, offset <= bytes.count - 4 else { return nil }
        return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    @inlinable public func u64(at offset: Int) -> UInt64? {
        // Sound: the field lies inside the buffer (checked); any bit pattern is a UInt64.
        guard offset >= 0, offset <= bytes.count - 8 else { return nil }
        return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}
