// Writing a snapshot file (protocol.md §6.5): a partial file under a temporary name, the
// memory section written by a round sink, then state, index and header, fsync, rename.

#if canImport(Glibc)
import Glibc
#endif
import Core
import Foundation
import Posix

/// The file being written. Created 0600 (it holds guest memory) as `.<name>.partial-<pid>`
/// next to the final name, which appears only by `rename` after everything is on disk; until
/// then the header page is zeros, so a partial file never looks complete (§6.5).
final class SnapshotFileWriter: @unchecked Sendable {
    let path: String
    let partialPath: String
    let file: FileDescriptor
    private var committed = false

    init(path: String) throws(SnapshotError) {
        let url = URL(fileURLWithPath: path)
        self.path = url.path
        partialPath = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).partial-\(getpid())").path
        unlink(partialPath) // our own leftover from an earlier attempt in this process
        do { file = try FileDescriptor.open(partialPath, O_RDWR | O_CREAT | O_EXCL, mode: 0o600) } catch {
            throw .io(operation: "cannot create", path: partialPath, errno: error.rawValue)
        }
    }

    deinit { if !committed { unlink(partialPath) } }

    /// pwrite(2) of all of `buffer` at `offset`.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(TransportError) {
        var done = 0
        while done < buffer.count {
            // Sound: `done < buffer.count`, so pointer and length stay inside `buffer`.
            let n: Int
            do { n = try file.call { pwrite($0, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done)) } }
            catch { throw .io(operation: "write \(partialPath)", errno: error.rawValue) }
            guard n > 0 else { throw .io(operation: "write \(partialPath)", errno: EIO) }
            done += n
        }
    }

    func write(_ bytes: [UInt8], at offset: UInt64) throws(TransportError) {
        var failure: TransportError?
        bytes.withUnsafeBytes { b in do throws(TransportError) { try write(b, at: offset) } catch { failure = error } }
        if let failure { throw failure }
    }

    /// Zeroes `[offset, offset + length)`: a slot that held data and must read as zeros now.
    /// (Written as zeros: Glibc's module does not expose fallocate's hole punching, so such a
    /// slot stays allocated; slots never written are holes.)
    func zero(at offset: UInt64, length: Int) throws(TransportError) {
        try write([UInt8](repeating: 0, count: length), at: offset)
    }

    func setSize(_ size: UInt64) throws(SnapshotError) {
        do { _ = try file.call { ftruncate($0, off_t(size)) } } catch {
            throw .io(operation: "cannot size", path: partialPath, errno: error.rawValue)
        }
    }

    /// fsync, rename to the final name, fsync the directory: from here the file is complete.
    func commit() throws(SnapshotError) {
        do { _ = try file.call { fsync($0) } } catch { throw .io(operation: "cannot fsync", path: partialPath, errno: error.rawValue) }
        guard rename(partialPath, path) == 0 else { throw .io(operation: "cannot rename to", path: path, errno: errno) }
        committed = true
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        if let d = try? FileDescriptor.open(directory, O_RDONLY | O_DIRECTORY) { _ = try? d.call { fsync($0) } }
    }
}

/// The compressed layout's memory section as a `ByteStream` (write only): frames go one after
/// another from offset 4096, exactly as a migration's single stream would carry them.
final class SnapshotFileStream: ByteStream, @unchecked Sendable {
    private let writer: SnapshotFileWriter
    private(set) var offset = UInt64(SnapshotHeader.size)

    init(_ writer: SnapshotFileWriter) { self.writer = writer }

    func writeAll(_ buffer: UnsafeRawBufferPointer) throws(TransportError) {
        try writer.write(buffer, at: offset)
        offset += UInt64(buffer.count)
    }

    func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws(TransportError) { throw .closed }
    func setTimeout(seconds: Double) {}
    func close() {}
    var peer: PeerIdentity { PeerIdentity(address: writer.partialPath) }
}

/// The mapped layout's round sink (protocol.md §6.4): page `i` goes to its slot at
/// `4096 + i × 4096`; a page that became zero gets its slot punched back to a hole.
final class MappedPageSink: PageRoundSink {
    let sentHashes: PageHashTable
    private let writer: SnapshotFileWriter
    private let memory: GuestMemory
    private let cancelled: () -> Bool
    /// Slots that hold data now.
    private(set) var written: PageBitmap
    private static let runPages = 256

    init(writer: SnapshotFileWriter, memory: GuestMemory, cancelled: @escaping () -> Bool) {
        self.writer = writer
        self.memory = memory
        self.cancelled = cancelled
        sentHashes = PageHashTable(pageCount: memory.pageCount)
        written = PageBitmap(pageCount: memory.pageCount)
    }

    func send(pages: PageBitmap, round: UInt32, skipZero: Bool) throws(MigrationError) -> RoundStats {
        let started = ContinuousClock.now
        var stats = RoundStats(round: Int(round))
        // Consecutive pages with data are copied into one buffer and written with one pwrite;
        // the copy is what is hashed, so the digest covers exactly the bytes in the file.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.runPages * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        var runStart = -1, runCount = 0
        func flush() throws(MigrationError) {
            guard runCount > 0 else { return }
            do {
                try writer.write(UnsafeRawBufferPointer(rebasing: buffer[0..<(runCount * 4096)]),
                                 at: UInt64(SnapshotHeader.size) + UInt64(runStart) * 4096)
            } catch { throw .transport(error) }
            stats.wireBytes += UInt64(runCount * 4096)
            runCount = 0
        }
        for index in pages.indices {
            if cancelled() { throw .cancelled }
            guard let page = memory.page(atIndex: index) else { continue }
            if runCount > 0, runStart + runCount != index || runCount == Self.runPages { try flush() }
            let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[(runCount * 4096)..<((runCount + 1) * 4096)])
            slot.copyMemory(from: UnsafeRawBufferPointer(page))
            if PageKind.classify(UnsafeRawBufferPointer(slot)) == .zero {
                if skipZero { continue }
                try flush()
                if written.contains(index) {
                    do { try writer.zero(at: UInt64(SnapshotHeader.size) + UInt64(index) * 4096, length: 4096) }
                    catch { throw .transport(error) }
                    written.remove(index)
                }
                sentHashes.recordZero(index)
                stats.zeroPages += 1
                continue
            }
            if runCount == 0 { runStart = index }
            runCount += 1
            sentHashes.record(index, UnsafeRawBufferPointer(slot))
            written.insert(index)
            stats.rawPages += 1
        }
        try flush()
        stats.pages = stats.zeroPages + stats.rawPages
        stats.seconds = (ContinuousClock.now - started).seconds
        return stats
    }

    /// Punches the slots of pages ballooned at the end (§6.4: they take no space and read
    /// as zeros at restore).
    func discard(_ ballooned: PageBitmap) throws(MigrationError) {
        for index in written.indices where ballooned.contains(index) {
            do { try writer.zero(at: UInt64(SnapshotHeader.size) + UInt64(index) * 4096, length: 4096) }
            catch { throw .transport(error) }
            written.remove(index)
        }
    }
}
