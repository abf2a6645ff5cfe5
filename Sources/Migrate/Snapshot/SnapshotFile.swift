// Reading a snapshot file (protocol.md §6.6): header, machine description, state and index
// are validated on open, before anything is built; memory is checked on demand (`verify`)
// and always for the compressed layout.

#if canImport(Glibc)
import Glibc
#endif
import Core
import Foundation
import Posix

/// An opened, validated snapshot (§6.6 "always checked"). Memory is not read by `open`.
public final class SnapshotFile: @unchecked Sendable {
    public let path: String
    public let header: SnapshotHeader
    /// The decoded state section (§1.8) and its bytes.
    public let state: MachineState
    public let stateBytes: [UInt8]
    /// The pages with data (§6.3).
    public let index: PageBitmap
    let file: FileDescriptor

    /// Opens `path` and validates everything but the memory pages: the header (fields,
    /// placement, file size, its digest), the machine description, the state (digest, §1.8
    /// decoding, agreement with the machine) and the index (digest, bits, count).
    public init(path: String) throws(SnapshotError) {
        self.path = path
        do { file = try FileDescriptor.open(path, O_RDONLY) } catch {
            throw .io(operation: "cannot open", path: path, errno: error.rawValue)
        }
        var st = stat()
        do { _ = try file.call { fstat($0, &st) } } catch { throw .io(operation: "cannot stat", path: path, errno: error.rawValue) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw .malformed(field: "file", reason: "\(path) is not a regular file") }
        let file = self.file
        (header, stateBytes, state, index) = try SnapshotHeader.decodeSections(size: UInt64(st.st_size), path: path) {
            (offset, count) throws(SnapshotError) in try Self.read(file, path: path, at: offset, count: count)
        }
    }

    /// The pages the saved guest had ballooned (excluded from the digest, §3.5).
    public var ballooned: PageBitmap? {
        guard let words = state.pv?.balloonWords else { return nil }
        var b = PageBitmap(pageCount: header.pageCount)
        b.merge(words: words, atPage: 0)
        return b
    }

    static func read(_ file: FileDescriptor, path: String, at offset: UInt64, count: Int) throws(SnapshotError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            // Sound: `done < count`, so the pointer and length stay inside `bytes`.
            let n: Int
            do { n = try file.call { fd in bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) } } }
            catch { throw .io(operation: "cannot read", path: path, errno: error.rawValue) }
            guard n > 0 else { throw .truncated(path: path, what: "a section at offset \(offset)") }
            done += n
        }
        return bytes
    }

    // MARK: Memory

    /// Guest memory for this snapshot: mapped copy-on-write from the file (mapped layout), or
    /// allocated and filled by reading the page batches (compressed; checked as it goes).
    func memoryConfiguration(_ c: inout Machine.Configuration) {
        c.memorySize = header.machine.memoryBytes
        c.vcpuCount = Int(header.machine.vcpus)
        c.inKernelIRQChip = header.machine.inKernelIRQChip
        // The saved VM's NIC, with its own MAC (§1.8 `net`); the caller gives it a network.
        c.netMAC = state.net?.mac
        c.memoryFile = header.layout == .mapped ? (file.rawValue, header.memoryOffset, index) : nil
    }

    /// Checks every page of `memory` (which holds this snapshot's memory) against the digest:
    /// Σ mix over the pages with data that are not ballooned (§3.5) and their count.
    /// `candidates`: the pages that may hold data (a hole or an untouched page cannot).
    func checkDigest(_ memory: GuestMemory, candidates: PageBitmap) throws(SnapshotError) {
        let computed = MemoryDigest.compute(memory: memory, candidates: candidates, excluding: ballooned)
        guard computed.digest == header.memoryDigest else {
            throw .digestMismatch(section: "guest memory", expected: header.memoryDigest, actual: computed.digest)
        }
        guard computed.pagesWithData == header.pagesWithData else {
            throw .malformed(field: "guest memory", reason: "\(computed.pagesWithData) pages hold data, the header says \(header.pagesWithData)")
        }
    }

    /// The mapped layout's slots that are not holes (SEEK_DATA / SEEK_HOLE; every slot when the
    /// file system cannot say), as pages.
    func slotsWithData() -> PageBitmap {
        var pages = PageBitmap(pageCount: header.pageCount)
        let start = off_t(header.memoryOffset), end = start + off_t(header.memoryLength)
        let seekData: Int32 = 3, seekHole: Int32 = 4 // SEEK_DATA, SEEK_HOLE (Linux)
        var position = start
        while position < end {
            let data = lseek(file.rawValue, position, seekData)
            if data < 0 {
                if errno == ENXIO { break } // no data after `position`
                pages.insertAll()
                return pages
            }
            guard data < end else { break }
            let hole = min(end, max(data + 1, lseek(file.rawValue, data, seekHole)))
            let first = Int((data - start) / 4096), last = Int((hole - start + 4095) / 4096)
            pages.insert(range: first, count: min(last, header.pageCount) - first)
            position = hole
        }
        return pages
    }

    /// Reads the compressed layout's memory section into `memory` (§6.4): the PAGES frames in
    /// order, each validated (§3.2–3.3) before it is applied, then STREAM_END with the frame
    /// count, exactly at the section's end; then the digest.
    func load(into memory: GuestMemory) throws(SnapshotError) {
        let stream = SnapshotReadStream(file: file, path: path, start: header.memoryOffset, length: header.memoryLength)
        let channel = FrameChannel(stream)
        let decoder = PageBatchDecoder(allowZstd: true, allowDelta: true)
        let hashes = PageHashTable(pageCount: memory.pageCount)
        while true {
            let before = channel.framesReceived
            let frame = try channel.receive(transport: { (e: TransportError) -> SnapshotError in
                e == .peerClosed ? .truncated(path: path, what: "guest memory (a page batch)") : .restore(e.description)
            }, wire: { .malformed(field: "memory frame \(before)", reason: $0.description) })
            switch frame {
            case let .pages(flags, payload):
                do { _ = try decoder.apply(flags: flags, payload: payload, to: memory, expectedRound: nil,
                                           pageApplied: { hashes.record($0, $1) }) }
                catch { throw .malformed(field: "memory frame \(before)", reason: error.description) }
            case .round: continue
            case let .streamEnd(frames):
                guard frames == before, channel.framesReceived == header.frames, stream.remaining == 0 else {
                    throw .malformed(field: "memory", reason: "STREAM_END after \(before) frames (it says \(frames), the header "
                        + "\(header.frames)), \(stream.remaining) bytes left in the section")
                }
                let digest = hashes.digest(excluding: ballooned)
                guard digest.digest == header.memoryDigest else {
                    throw .digestMismatch(section: "guest memory", expected: header.memoryDigest, actual: digest.digest)
                }
                guard digest.pagesWithData == header.pagesWithData else {
                    throw .malformed(field: "guest memory", reason: "\(digest.pagesWithData) pages hold data, the header says \(header.pagesWithData)")
                }
                return
            case let other:
                throw .malformed(field: "memory frame \(before)", reason: "\(other.name) in a snapshot's memory section")
            }
        }
    }
}

/// A read-only `ByteStream` over one section of a file: frames are read from it exactly as
/// from a migration stream; reading past the section's end is `.peerClosed` (truncated).
final class SnapshotReadStream: ByteStream, @unchecked Sendable {
    private let file: FileDescriptor
    private let path: String
    private var position: UInt64
    private let end: UInt64

    init(file: FileDescriptor, path: String, start: UInt64, length: UInt64) {
        self.file = file
        self.path = path
        position = start
        end = start + length
    }

    var remaining: UInt64 { end - position }

    func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws(TransportError) {
        guard UInt64(buffer.count) <= remaining else { throw .peerClosed }
        var done = 0
        while done < buffer.count {
            // Sound: `done < buffer.count`, so the pointer and length stay inside `buffer`.
            let n: Int
            do { n = try file.call { pread($0, buffer.baseAddress! + done, buffer.count - done, off_t(position) + off_t(done)) } }
            catch { throw .io(operation: "read \(path)", errno: error.rawValue) }
            guard n > 0 else { throw .peerClosed }
            done += n
        }
        position += UInt64(buffer.count)
    }

    func writeAll(_ buffer: UnsafeRawBufferPointer) throws(TransportError) { throw .closed }
    func setTimeout(seconds: Double) {}
    func close() {}
    var peer: PeerIdentity { PeerIdentity(address: path) }
}
