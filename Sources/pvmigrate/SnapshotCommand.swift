import ArgumentParser
import Core
import Foundation
import Migrate

/// `pvmigrate snapshot inspect|verify FILE` (docs/protocol.md §6).
struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect or verify a snapshot file without running it.",
        subcommands: [Inspect.self, Verify.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a snapshot's version, machine, sizes, page encodings and digests (header, state and index are checked).")

        @Argument(help: "The snapshot file.")
        var file: String

        @Flag(name: .long, help: "Print as JSON.")
        var json = false

        func run() throws {
            let s: SnapshotFile
            do { s = try SnapshotFile(path: file) } catch { throw Diagnostics.fail(error) }
            let info = SnapshotInfo(s)
            if json { print(try JSONText.pretty(info)); return }
            let h = s.header
            print("""
                \(file): pvmigrate snapshot version \(SnapshotHeader.version), \(h.layout) layout
                  machine       VM \(h.machine.name), \(Format.memory(h.machine.memoryBytes)), \(h.machine.vcpus) vCPU\(h.machine.vcpus == 1 ? "" : "s")\
                \(h.machine.inKernelIRQChip ? ", in-kernel irqchip" : ""), kernel sha256 \(info.kernelSHA256.prefix(16))…
                  saved         \(Date(timeIntervalSince1970: Double(h.savedAt))) in \(h.rounds) round\(h.rounds == 1 ? "" : "s")
                  memory        \(Format.count(Int(h.pagesWithData))) pages with data of \(Format.count(h.pageCount)); \
                \(Format.bytes(Double(h.memoryLength))) section\(h.layout == .compressed ? " in \(h.frames) frames (zstd page batches, §3.3)" : " (one 4 KiB slot per page)")
                  file          \(Format.bytes(Double(h.fileSize))), \(Format.bytes(Double(info.allocatedBytes))) on disk
                  state         \(h.stateLength) bytes (§1.8 machine state, \(s.state.vcpus.count) vCPU)\
                \(s.state.pv.map { $0.isInUse ? ", PV interface registered" : "" } ?? "")
                  digests       memory 0x\(String(h.memoryDigest, radix: 16)), state 0x\(String(h.stateDigest, radix: 16)), \
                index 0x\(String(h.indexDigest, radix: 16))
                """)
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a snapshot end to end: header, state, index and every memory page against the digest.")

        @Argument(help: "The snapshot file.")
        var file: String

        func run() throws {
            let started = Date()
            let pages: UInt64
            do { pages = try SnapshotFile(path: file).verifyMemory() } catch { throw Diagnostics.fail(error) }
            print(String(format: "%@: OK (header, state, index and %@ pages with data checked in %.2f s)",
                         file, Format.count(Int(pages)), Date().timeIntervalSince(started)))
        }
    }
}

/// `snapshot inspect --json`.
struct SnapshotInfo: Encodable {
    var version = Int(SnapshotHeader.version)
    var layout: String
    var name: String
    var memoryBytes: UInt64
    var vcpus: UInt32
    var inKernelIRQChip: Bool
    var kernelSHA256: String
    var savedAt: UInt64
    var rounds: UInt32
    var pagesWithData: UInt64
    var memorySectionBytes: UInt64
    var frames: UInt64
    var stateBytes: UInt64
    var fileBytes: UInt64
    var allocatedBytes: UInt64
    var memoryDigest: UInt64
    var stateDigest: UInt64
    var indexDigest: UInt64

    init(_ s: SnapshotFile) {
        let h = s.header
        layout = h.layout.description; name = h.machine.name; memoryBytes = h.machine.memoryBytes
        vcpus = h.machine.vcpus; inKernelIRQChip = h.machine.inKernelIRQChip
        kernelSHA256 = h.machine.kernelSHA256.map { String(format: "%02x", $0) }.joined()
        savedAt = h.savedAt; rounds = h.rounds; pagesWithData = h.pagesWithData; memorySectionBytes = h.memoryLength
        frames = h.frames; stateBytes = h.stateLength; fileBytes = h.fileSize
        var st = stat()
        allocatedBytes = stat(s.path, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
        memoryDigest = h.memoryDigest; stateDigest = h.stateDigest; indexDigest = h.indexDigest
    }
}
