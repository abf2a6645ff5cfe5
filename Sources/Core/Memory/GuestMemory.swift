import Glibc
import Posix

/// Errors in guest-memory management and access.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    /// An access touched bytes outside every RAM region (the range as given).
    case outOfBounds(address: UInt64, length: UInt64)
    /// The requested layout is unusable (zero size, unaligned, too big).
    case invalidSize(String)
    case mmapFailed(bytes: UInt64, errno: Int32)

    public var description: String {
        switch self {
        case let .outOfBounds(a, n):
            return "guest memory access of \(n) bytes at 0x\(String(a, radix: 16)) is outside guest RAM"
        case let .invalidSize(why): return "invalid guest memory size: \(why)"
        case let .mmapFailed(bytes, err):
            return "cannot allocate \(bytes >> 20) MiB of guest memory: \(Errno(err)); try a smaller --memory"
        }
    }
}

/// One contiguous RAM region: host mapping + guest-physical placement. Owns its mapping.
public final class MemoryRegion: @unchecked Sendable {
    public let range: GuestRange
    public let slot: UInt32
    /// Sound to use while `self` is alive: a private mapping of `range.size` bytes —
    /// anonymous, or (a restored snapshot, protocol.md §6.4) copy-on-write of a file.
    public let host: UnsafeMutableRawPointer
    /// The mapping is a private (copy-on-write) mapping of a file: discarded pages must be
    /// replaced by anonymous zero pages, not dropped (they would read as the file again).
    public let isFileBacked: Bool

    init(slot: UInt32, start: GuestPhysicalAddress, size: UInt64,
         file: (descriptor: Int32, offset: UInt64)? = nil) throws(GuestMemoryError) {
        guard let range = GuestRange(start: start, size: size) else { throw .invalidSize("region overflows") }
        let p: UnsafeMutableRawPointer?
        if let file {
            // MAP_PRIVATE: the guest's writes go to private copies; the file never changes.
            p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, file.descriptor,
                     off_t(file.offset))
        } else {
            p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        }
        guard let p, p != MAP_FAILED else { throw .mmapFailed(bytes: size, errno: errno) }
        self.range = range
        self.slot = slot
        isFileBacked = file != nil
        host = p
    }

    deinit { munmap(host, Int(range.size)) }

    public var pageCount: Int { Int(range.size / GuestPhysicalAddress.pageSize) }
}

/// Guest RAM: the set of regions for one VM, and bounds-checked access to them.
///
/// Layout (protocol.md §1.2): RAM from 0 up to 3 GiB, the rest from 4 GiB. Every access
/// that carries a guest- or network-supplied address goes through `bytes(at:count:)`, which
/// checks the whole range lies inside one region.
public final class GuestMemory: @unchecked Sendable {
    public static let lowMemoryLimit: UInt64 = 3 << 30
    public static let highMemoryBase: UInt64 = 4 << 30

    public let regions: [MemoryRegion]
    public let size: UInt64
    /// For memory mapped from a file: the pages the file holds data for (the others are holes
    /// there). With `mincore` they make `residentPages()`: a file page not in the page cache is
    /// not resident, yet holds data.
    public let fileDataPages: PageBitmap?
    /// Pages the VMM itself wrote (KVM does not log them): see `markHostWritten`.
    private let hostWritten: Locked<PageLog>

    /// Allocates `size` bytes of RAM (a multiple of 2 MiB, at least 4 MiB).
    public convenience init(size: UInt64) throws(GuestMemoryError) {
        try self.init(size: size, file: nil)
    }

    /// RAM mapped copy-on-write from `file`: page index `i` (protocol.md §3.3 numbering) is
    /// the file's bytes at `file.offset + i × 4096` (a snapshot's memory, §6.4). The file is
    /// never written; its descriptor may be closed afterwards (the mapping keeps it open).
    /// `dataPages`: the pages the file holds data for (nil: assume every page may).
    public convenience init(size: UInt64, mappingFile descriptor: Int32, offset: UInt64,
                            dataPages: PageBitmap? = nil) throws(GuestMemoryError) {
        guard offset % GuestPhysicalAddress.pageSize == 0 else { throw .invalidSize("file offset \(offset) is not page-aligned") }
        try self.init(size: size, file: (descriptor, offset), dataPages: dataPages ?? .full(pageCount: Int(size / 4096)))
    }

    private init(size: UInt64, file: (descriptor: Int32, offset: UInt64)?, dataPages: PageBitmap? = nil) throws(GuestMemoryError) {
        guard size >= 4 << 20 else { throw .invalidSize("at least 4 MiB is needed, got \(size) bytes") }
        guard size % (2 << 20) == 0 else { throw .invalidSize("must be a multiple of 2 MiB, got \(size) bytes") }
        guard size <= 1 << 40 else { throw .invalidSize("at most 1 TiB") }
        let low = min(size, Self.lowMemoryLimit)
        var regions = [try MemoryRegion(slot: 0, start: GuestPhysicalAddress(0), size: low, file: file)]
        if size > Self.lowMemoryLimit {
            regions.append(try MemoryRegion(slot: 1, start: GuestPhysicalAddress(Self.highMemoryBase),
                                            size: size - Self.lowMemoryLimit,
                                            file: file.map { ($0.descriptor, $0.offset + low) }))
        }
        self.regions = regions
        self.size = size
        fileDataPages = dataPages
        hostWritten = Locked(PageLog(pageCount: Int(size / GuestPhysicalAddress.pageSize)))
    }

    /// The region holding all of `[address, address + count)`, and the offset into it.
    public func locate(_ address: GuestPhysicalAddress, count: UInt64) -> (MemoryRegion, UInt64)? {
        guard let wanted = GuestRange(start: address, size: count) else { return nil }
        for region in regions where region.range.contains(wanted) {
            return (region, address.raw - region.range.start.raw)
        }
        return nil
    }

    /// Host bytes for a guest range, or `outOfBounds`. Valid while `self` is alive.
    public func bytes(at address: GuestPhysicalAddress, count: UInt64) throws(GuestMemoryError)
        -> UnsafeMutableRawBufferPointer {
        guard let (region, offset) = locate(address, count: count) else {
            throw .outOfBounds(address: address.raw, length: count)
        }
        // Sound: `locate` proved [offset, offset + count) lies inside the region's mapping.
        return UnsafeMutableRawBufferPointer(start: region.host + Int(offset), count: Int(count))
    }

    public func write(_ data: some Collection<UInt8>, at address: GuestPhysicalAddress) throws(GuestMemoryError) {
        let target = try bytes(at: address, count: UInt64(data.count))
        target.copyBytes(from: data)
        markHostWritten(address, count: UInt64(data.count))
    }

    /// Records that the VMM wrote `[address, address + count)`. Every host write to guest
    /// memory must be recorded — `write`/`writeInteger` do it; code writing through
    /// `bytes(at:count:)` calls this itself — because KVM's dirty log does not see them.
    public func markHostWritten(_ address: GuestPhysicalAddress, count: UInt64) {
        guard count > 0, let first = pageIndex(of: address.frame),
              let last = address.adding(count - 1).flatMap({ pageIndex(of: $0.frame) }) else { return }
        hostWritten.withLock { $0.insert(range: first, count: last - first + 1) }
    }

    /// The pages the VMM wrote since the last call; clears the record.
    public func takeHostWrittenPages() -> PageBitmap {
        hostWritten.withLock { $0.take() }
    }

    /// The same, ORed into `pages` (of this memory's page count): costs what was written.
    public func takeHostWrittenPages(into pages: inout PageBitmap) {
        hostWritten.withLock { $0.drain(into: &pages) }
    }

    public func read(at address: GuestPhysicalAddress, count: UInt64) throws(GuestMemoryError) -> [UInt8] {
        Array(try bytes(at: address, count: count))
    }

    public func writeInteger<T: FixedWidthInteger>(_ value: T, at address: GuestPhysicalAddress) throws(GuestMemoryError) {
        let target = try bytes(at: address, count: UInt64(MemoryLayout<T>.size))
        target.storeBytes(of: value.littleEndian, as: T.self)
        markHostWritten(address, count: UInt64(MemoryLayout<T>.size))
    }

    public func readInteger<T: FixedWidthInteger>(_: T.Type, at address: GuestPhysicalAddress) throws(GuestMemoryError) -> T {
        let source = try bytes(at: address, count: UInt64(MemoryLayout<T>.size))
        return T(littleEndian: source.loadUnaligned(as: T.self))
    }

    /// Copies every region of `other` (same layout) into this memory: the "memory copied"
    /// step of save -> restore into a second VM.
    public func copyContents(from other: GuestMemory) throws(GuestMemoryError) {
        guard other.regions.map(\.range) == regions.map(\.range) else {
            throw .invalidSize("layouts differ: \(other.regions.map(\.range)) vs \(regions.map(\.range))")
        }
        for (dst, src) in zip(regions, other.regions) {
            dst.host.copyMemory(from: src.host, byteCount: Int(dst.range.size))
            markHostWritten(dst.range.start, count: dst.range.size)
        }
    }
}
