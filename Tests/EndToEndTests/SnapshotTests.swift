import Control
import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// Snapshots (protocol.md §6) through the real binary: `save` of named VMs, `restore` under a
    /// new name, `snapshot verify`, and the refusals a damaged file must get.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct SnapshotTests {
        typealias Sandbox = CLITests.Sandbox

        /// A scratch directory for snapshot files, removed at the end.
        final class Files {
            let path = "/tmp/pvm-snap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            init() throws { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
            deinit { try? FileManager.default.removeItem(atPath: path) }
            func callAsFunction(_ name: String) -> String { path + "/" + name }
        }

        /// `run --name NAME --detach` with the built-in guest and `cmdline`.
        static func start(_ box: Sandbox, _ name: String, memory: String = "64M", cmdline: String) throws {
            let r = try box.run(["run", "--name", name, "--memory", memory, "--detach", "--cmdline", cmdline])
            try #require(r.status == 0, "run --detach failed: \(r.text)")
        }

        /// Waits until the VM's console shows `line`.
        static func waitForConsole(_ box: Sandbox, _ name: String, _ line: String) throws {
            var seen = ""
            let found = try Wait.until {
                seen = try box.run(["console", name]).stdout
                return seen.contains(line)
            }
            try #require(found, "VM \(name) never printed \"\(line)\"; its console ends: \(seen.suffix(400))")
        }

        static func selfcheckIsClean(_ box: Sandbox, _ name: String) throws {
            let r = try box.run(["selfcheck", name, "--json"], timeout: 120)
            try #require(r.status == 0, "selfcheck of \(name) failed: \(r.text)")
            let result = try JSONValue(parsing: Data(r.stdout.utf8))
            #expect(result["bad"]?.int64 == 0, "self-check of \(name) after restore: \(r.stdout)")
            #expect((result["pages"]?.int64 ?? 0) > 0, "self-check of \(name) checked no pages: \(r.stdout)")
        }

        /// `save --json`: the result, or a recorded failure.
        static func save(_ box: Sandbox, _ vm: String, _ file: String, _ flags: [String] = []) throws -> JSONValue {
            let r = try box.run(["save", vm, file, "--json"] + flags, timeout: 300)
            try #require(r.status == 0, "save \(vm) \(flags) failed: \(r.text)")
            return try JSONValue(parsing: Data(r.stdout.utf8))
        }

        /// `restore FILE --name NAME --detach …`, then the restored VM's process id.
        @discardableResult
        static func restore(_ box: Sandbox, _ file: String, as name: String, _ flags: [String] = []) throws -> Int32 {
            let r = try box.run(["restore", file, "--name", name, "--detach"] + flags, timeout: 120)
            try #require(r.status == 0, "restore \(file) \(flags) failed: \(r.text)")
            return Int32(try #require(try box.status(name)?["pid"]?.int64))
        }

        /// The digest `snapshot inspect` reads from the file's header.
        static func inspect(_ box: Sandbox, _ file: String) throws -> JSONValue {
            let r = try box.run(["snapshot", "inspect", file, "--json"])
            try #require(r.status == 0, "snapshot inspect failed: \(r.text)")
            return try JSONValue(parsing: Data(r.stdout.utf8))
        }

        @Test func savedGuestsResumeWithACleanSelfCheckLiveOrNot() throws {
            let box = try Sandbox(), files = try Files()
            try Self.start(box, "d", cmdline: "workload=dirty mib=8 rate=2000 passes=0 progress=0")
            try Self.waitForConsole(box, "d", "pvguest: pass 0 done")
            // A dirtying guest: paused and saved (mapped), then live (compressed).
            for (file, flags) in [("d.snap", [String]()), ("dl.snap", ["--live", "--compression", "compressed"])] {
                let saved = try Self.save(box, "d", files(file), flags)
                let header = try Self.inspect(box, files(file))
                let digest = try #require(header["memoryDigest"]?.uint64, "no digest in \(header)")
                #expect(digest == saved["stats"]?["digest"]?.uint64, "the file's digest is not the one the save computed: \(header) vs \(saved)")
                let verify = try box.run(["snapshot", "verify", files(file)])
                #expect(verify.status == 0 && verify.stdout.contains("OK"), "\(verify.text)")
                let attrs = try FileManager.default.attributesOfItem(atPath: files(file))
                #expect((attrs[.posixPermissions] as? Int) == 0o600, "snapshot mode \(String(describing: attrs[.posixPermissions]))")
            }
            #expect(try box.status("d")?["state"]?.string == "running", "the VM must run on after save")
            // Restored (mapped: with --verify, every page against the digest; compressed: always
            // checked), each resumes where it was and its pages all carry the right stamps.
            try Self.restore(box, files("d.snap"), as: "d1", ["--verify"])
            try Self.selfcheckIsClean(box, "d1")
            try Self.restore(box, files("dl.snap"), as: "d2")
            try Self.selfcheckIsClean(box, "d2")
            // An idle guest, live, mapped, with --stop: the VM is gone once the file is there.
            try Self.start(box, "i", cmdline: "workload=idle fill=4")
            try Self.waitForConsole(box, "i", "pvguest: workload idle")
            _ = try Self.save(box, "i", files("i.snap"), ["--live", "--stop"])
            #expect(try Wait.until(timeout: 30) { try box.status("i") == nil }, "save --stop left VM i running")
            try Self.restore(box, files("i.snap"), as: "i1")
            let check = try box.run(["selfcheck", "i1"])
            #expect(check.status == 0 && check.stdout.contains("0 bad"), "\(check.text)")
        }

        /// Issue 13 meets issue 15: every vCPU's state is in the file, and after a live save and
        /// a restore both vCPUs run on and every page either of them wrote is intact.
        @Test func aTwoVCPUGuestSavedLiveResumesOnBothVCPUs() throws {
            let box = try Sandbox(), files = try Files()
            let r = try box.run(["run", "--name", "v", "--vcpus", "2", "--memory", "64M", "--detach",
                                 "--cmdline", "workload=dirty mib=8 rate=2000 passes=0 progress=0"])
            try #require(r.status == 0, "run --vcpus 2 --detach failed: \(r.text)")
            try Self.waitForConsole(box, "v", "pvguest: pass 0 done")
            _ = try Self.save(box, "v", files("v.snap"), ["--live", "--stop"])
            let header = try Self.inspect(box, files("v.snap"))
            #expect(header.description.contains("\"vcpus\":2") || header["machine"]?["vcpus"]?.int64 == 2,
                    "the snapshot does not describe 2 vCPUs: \(header)")
            try Self.restore(box, files("v.snap"), as: "v1")
            let vcpus = try #require(try box.status("v1")?["vcpus"]?.array, "no vcpus in the restored VM's status")
            #expect(vcpus.count == 2, "restored VM has \(vcpus.count) vCPUs")
            try Self.selfcheckIsClean(box, "v1")
        }

        @Test func damagedOrTruncatedSnapshotsAreRefusedBeforeAnythingRuns() throws {
            let box = try Sandbox(), files = try Files()
            try Self.start(box, "s", cmdline: "workload=idle fill=4")
            try Self.waitForConsole(box, "s", "pvguest: workload idle")
            let good = files("s.snap"), compressed = files("sc.snap")
            _ = try Self.save(box, "s", good)
            _ = try Self.save(box, "s", compressed, ["--compression", "compressed"])
            let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
            let cBytes = try Data(contentsOf: URL(fileURLWithPath: compressed))
            // The state follows memory (§6.1): offset 4096 + memory_bytes in the mapped layout.
            let state = 4096 + (64 << 20)
            // The first byte of guest memory that is not zero: a page with data.
            let memoryByte = try #require(bytes[4096..<state].firstIndex { $0 != 0 })
            let cases: [(String, Data, [String], String)] = [
                ("truncated", bytes.prefix(bytes.count - 100), [], "truncated"),
                ("state byte", Self.flip(bytes, at: state + 64), [], "state is damaged"),
                ("memory byte, --verify", Self.flip(bytes, at: memoryByte), ["--verify"], "guest memory is damaged"),
                ("compressed memory byte", Self.flip(cBytes, at: 4096 + 40), [], "memory frame 0"),
                ("compressed, truncated", cBytes.prefix(cBytes.count - 1), [], "truncated"),
            ]
            for (i, (what, data, flags, message)) in cases.enumerated() {
                let path = files("bad\(i).snap")
                try data.write(to: URL(fileURLWithPath: path))
                let r = try box.run(["restore", path, "--name", "bad\(i)", "--detach"] + flags, timeout: 120)
                #expect(r.status != 0, "a snapshot with a \(what) was restored: \(r.text)")
                #expect(r.stderr.contains(message), "refusal of a \(what) does not say \"\(message)\": \(r.stderr)")
                #expect(try box.status("bad\(i)") == nil, "VM bad\(i) runs from a snapshot with a \(what)")
            }
            // `snapshot verify` finds the flipped memory byte that the mapped fast path does not read.
            let verify = try box.run(["snapshot", "verify", files("bad2.snap")])
            #expect(verify.status != 0 && verify.stderr.contains("guest memory is damaged"), "\(verify.text)")
        }

        static func flip(_ data: Data, at offset: Int) -> Data {
            var d = data
            d[offset] ^= 0x01
            return d
        }

        @Test func aSaveKilledMidwayLeavesNoCompleteLookingFile() throws {
            let box = try Sandbox(), files = try Files()
            try Self.start(box, "k", memory: "256M", cmdline: "workload=dirty mib=64 rate=0 passes=0 progress=0 fill=128")
            try Self.waitForConsole(box, "k", "pvguest: fill 128 MiB done")
            let pid = Int32(try #require(try box.status("k")?["pid"]?.int64))
            let file = files("k.snap")
            let runtime = box.runtime
            let saver = Thread {
                _ = try? PVMigrateBinary.run(["save", "k", file, "--live", "--max-time", "600"], runtimeDirectory: runtime, timeout: 300)
            }
            saver.start()
            var partial: String?
            let started = Wait.until {
                partial = (try? FileManager.default.contentsOfDirectory(atPath: files.path))?.first { $0.hasPrefix(".k.snap.partial-") }
                return partial != nil
            }
            try #require(started, "the save never created its partial file in \(files.path)")
            kill(pid, SIGKILL)
            #expect(Wait.until { kill(pid, 0) != 0 }, "the VM process \(pid) survived SIGKILL")
            #expect(!FileManager.default.fileExists(atPath: file), "a killed save left \(file)")
            if let partial {
                let r = try box.run(["snapshot", "inspect", files(partial)])
                #expect(r.status != 0, "a partial file passes as a snapshot: \(r.text)")
                let restore = try box.run(["restore", files(partial), "--name", "k2"])
                #expect(restore.status != 0, "a partial file was restored: \(restore.text)")
                #expect(try box.status("k2") == nil, "VM k2 runs from a partial file")
            }
        }

        @Test func mappedRestoreDoesNotReadGuestMemoryUpFront() throws {
            let box = try Sandbox(), files = try Files()
            try Self.start(box, "m", memory: "256M", cmdline: "workload=idle fill=128")
            try Self.waitForConsole(box, "m", "pvguest: workload idle")
            let file = files("m.snap")
            let saved = try Self.save(box, "m", file, ["--stop"])
            let dataBytes = (saved["stats"]?["pagesWithData"]?.int64 ?? 0) * 4096
            try #require(dataBytes >= 128 << 20, "the guest's 128 MiB fill is not in the file: \(saved)")
            let pid = try Self.restore(box, file, as: "m1")
            // Right after resume: the snapshot's mapping has only what the guest touched since.
            let resident = try #require(Self.residentBytes(pid: pid, mapping: file), "no mapping of \(file) in process \(pid)")
            #expect(resident < dataBytes / 8, "restore read \(resident >> 20) MiB of the \(dataBytes >> 20) MiB in the file up front")
            let check = try box.run(["selfcheck", "m1"])
            #expect(check.status == 0 && check.stdout.contains("0 bad"), "\(check.text)")
        }

        /// Σ Rss of the process's mappings of `path` (/proc/PID/smaps).
        static func residentBytes(pid: Int32, mapping path: String) -> Int64? {
            // Read to the end: procfs files report a size of 0.
            guard let handle = FileHandle(forReadingAtPath: "/proc/\(pid)/smaps"),
                  let data = try? handle.readToEnd() else { return nil }
            let text = String(decoding: data, as: UTF8.self)
            var inside = false, found = false, total: Int64 = 0
            for line in text.split(separator: "\n") {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                if let first = fields.first, first.contains("-"), fields.count >= 5 {
                    inside = fields.count >= 6 && fields[5...].joined(separator: " ") == path
                    found = found || inside
                } else if inside, fields.first == "Rss:", fields.count >= 2, let kB = Int64(fields[1]) {
                    total += kB * 1024
                }
            }
            return found ? total : nil
        }
    }
}
