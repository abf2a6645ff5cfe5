import Control
import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// The command line as people use it: the real `pvmigrate` binary, named VMs on the real KVM,
    /// their control sockets (protocol.md §4) in a scratch runtime directory per test.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct CLITests {
        /// One test's runtime directory; stops whatever VMs the test left behind.
        final class Sandbox {
            let runtime: String
            private var pids: [Int32] = []

            init() throws {
                // Short: a Unix socket path must fit in 108 bytes.
                runtime = "/tmp/pvm-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true)
            }

            deinit {
                for pid in pids { kill(pid, SIGKILL) }
                let names = (try? FileManager.default.contentsOfDirectory(atPath: runtime + "/vms")) ?? []
                for name in names where name.hasSuffix(".sock") {
                    _ = try? run(["stop", String(name.dropLast(5))], timeout: 10)
                }
                try? FileManager.default.removeItem(atPath: runtime)
            }

            /// Runs `pvmigrate arguments…` to the end (killed after `timeout` seconds).
            @discardableResult
            func run(_ arguments: [String], timeout: Double = 30) throws -> CommandOutput {
                try PVMigrateBinary.run(arguments, runtimeDirectory: runtime, timeout: timeout)
            }

            /// `run --name NAME --detach` with a small idle guest; remembers its pid for clean-up.
            func startVM(_ name: String, extra: [String] = []) throws {
                let r = try run(["run", "--name", name, "--memory", "64M", "--detach"] + extra)
                #expect(r.status == 0, "run --detach failed: \(r.text)")
                #expect(r.stdout.contains("started VM \(name) (socket \(runtime)/vms/\(name).sock)"))
                if let pid = try status(name)?["pid"]?.int64 { pids.append(Int32(pid)) }
            }

            func status(_ name: String) throws -> JSONValue? {
                let r = try run(["status", name, "--json"])
                guard r.status == 0 else { return nil }
                return try JSONValue(parsing: Data(r.stdout.utf8))
            }

            /// Names in `ps`'s table.
            func psNames() throws -> [String] {
                let r = try run(["ps"])
                #expect(r.status == 0, "ps failed: \(r.text)")
                return r.stdout.split(separator: "\n").dropFirst().compactMap { $0.split(separator: " ").first.map(String.init) }
            }
        }

        @Test func detachedVMIsListedInspectedCheckedAndStopped() throws {
            let box = try Sandbox()
            try box.startVM("a", extra: ["--vcpus", "2"])

            #expect(try box.psNames() == ["a"])
            let ps = try box.run(["ps"])
            #expect(ps.stdout.contains("running") && ps.stdout.contains("VCPUS"), "\(ps.text)")

            let status = try #require(try box.status("a"))
            #expect(status["name"]?.string == "a")
            #expect(status["state"]?.string == "running")
            #expect(status["memory_bytes"]?.int64 == 64 << 20)
            #expect(["native", "emulated", "hardware"].contains(status["execution"]?.string ?? ""))
            #expect(status["pv"]?["registered"] != nil)
            // One entry per vCPU (issue 13): index, state, execution mode, PV counters.
            let vcpus = try #require(status["vcpus"]?.array, "no vcpus in \(status)")
            #expect(vcpus.count == 2 && vcpus.enumerated().allSatisfy { $1["index"]?.int64 == Int64($0) })
            #expect(vcpus.allSatisfy { ["native", "emulated", "hardware"].contains($0["execution"]?.string ?? "")
                                       && $0["pages_written"] != nil && $0["state"]?.string != nil })

            // The guest prints its banner at once, but on a loaded machine "at once" may be late.
            var console = try box.run(["console", "a"])
            try Wait.until {
                console = try box.run(["console", "a"])
                return console.stdout.contains("pvguest: workload idle")
            }
            #expect(console.status == 0)
            #expect(console.stdout.contains("pvguest: pvmigrate built-in guest, version 1"), "\(console.text)")

            let check = try box.run(["selfcheck", "a"])
            #expect(check.status == 0, "\(check.text)")
            #expect(check.stdout.contains("0 bad"), "\(check.text)")
            let checkJSON = try box.run(["selfcheck", "a", "--json"])
            #expect(try JSONValue(parsing: Data(checkJSON.stdout.utf8))["bad"]?.int64 == 0)

            let stop = try box.run(["stop", "a"])
            #expect(stop.status == 0, "\(stop.text)")
            #expect(try box.psNames().isEmpty)
            #expect(!FileManager.default.fileExists(atPath: box.runtime + "/vms/a.sock"))
            let gone = try box.run(["status", "a"])
            #expect(gone.status != 0)
        }

        @Test func aSecondVMCannotTakeARunningVMsName() throws {
            let box = try Sandbox()
            try box.startVM("a")
            let foreground = try box.run(["run", "--name", "a", "--memory", "64M", "--duration", "5"])
            #expect(foreground.status != 0)
            #expect(foreground.stderr.contains("already"), "\(foreground.text)")
            let detached = try box.run(["run", "--name", "a", "--memory", "64M", "--detach"])
            #expect(detached.status != 0)
            #expect(detached.stderr.contains("already"), "\(detached.text)")
            #expect(try box.status("a")?["state"]?.string == "running")
        }

        @Test func aStaleSocketDoesNotKeepItsName() throws {
            let box = try Sandbox()
            let runtime = try RuntimeDirectory(environment: ["PVMIGRATE_RUNTIME_DIR": box.runtime])
            // A socket file nobody serves, as a killed VM process leaves it.
            let path = runtime.socketPath(for: "a")
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            #expect(bound == 0)
            close(fd)
            #expect(try box.psNames().isEmpty)
            try box.startVM("a")
            #expect(try box.psNames() == ["a"])
        }

        /// A local user must not reach another user's VM (docs/security.md "Local users"): the
        /// control socket is mode 0600 (and its directory 0700, `RuntimeDirectoryTests`).
        @Test func theControlSocketIsPrivate() throws {
            let box = try Sandbox()
            try box.startVM("a")
            let attributes = try FileManager.default.attributesOfItem(atPath: box.runtime + "/vms/a.sock")
            let mode = try #require(attributes[.posixPermissions] as? Int)
            #expect(mode & 0o777 == 0o600, "the control socket's mode is \(String(mode, radix: 8))")
        }

        @Test func noSuchVMIsAClearError() throws {
            let box = try Sandbox()
            for command in [["status", "nope"], ["stop", "nope"], ["console", "nope"], ["send", "127.0.0.1:1", "nope", "--insecure"]] {
                let r = try box.run(command)
                #expect(r.status != 0)
                #expect(r.stderr.contains("no VM named nope on this host (pvmigrate ps lists them)"), "\(command): \(r.text)")
                #expect(r.stderr.split(separator: "\n").count == 1, "one line: \(r.text)")
            }
            let invalid = try box.run(["status", "../x"])
            #expect(invalid.status != 0)
            #expect(invalid.stderr.contains("invalid VM name"), "\(invalid.text)")
        }

        @Test func aFailedSendLeavesTheVMRunningHere() throws {
            let box = try Sandbox()
            try box.startVM("a")
            let send = try box.run(["send", "127.0.0.1:1", "a", "--insecure"])
            #expect(send.status != 0)
            #expect(send.stderr.contains("pvmigrate: error: "), "\(send.text)")
            #expect(send.stderr.contains("the VM still runs here (pvmigrate status a)"), "\(send.text)")
            #expect(try box.status("a")?["state"]?.string == "running")

            // Without certificates: the default TLS directory is named in the error.
            let tls = try box.run(["send", "127.0.0.1:1", "a"])
            #expect(tls.status != 0)
            #expect(tls.stderr.contains("\(box.runtime)/tls/ca.pem is missing"), "\(tls.text)")
            #expect(tls.stderr.contains("the VM still runs here"), "\(tls.text)")

            let both = try box.run(["send", "127.0.0.1:1", "a", "--insecure", "--tls-dir", "/tmp"])
            #expect(both.status != 0)
            #expect(both.stderr.contains("exclude each other"), "\(both.text)")
            #expect(try box.status("a")?["state"]?.string == "running")
        }

        /// The happy path of `send` against an in-process destination (the real engine over
        /// plain TCP on loopback): the statistics come back, the VM is gone here, and the
        /// process that ran it ends.
        @Test func aSentVMLeavesThisHost() throws {
            let box = try Sandbox()
            let arrivals = MigrationTests.Arrivals()
            let listener = try MigrationListener(host: "127.0.0.1", port: 0, tls: .insecure)
            defer { listener.close() }
            listener.serve(onArrival: { vm in
                arrivals.condition.withLock { arrivals.vms.append(vm); arrivals.condition.broadcast() }
            }, onFailure: { why in
                arrivals.condition.withLock { arrivals.failures.append(why); arrivals.condition.broadcast() }
            })
            try box.startVM("a", extra: ["--cmdline", "workload=dirty mib=8 passes=0 rate=2000 progress=0"])
            let pid = try #require(try box.status("a")?["pid"]?.int64)
            let send = try box.run(["send", "127.0.0.1:\(listener.port)", "a", "--insecure", "--json", "--streams", "2"], timeout: 120)
            #expect(send.status == 0, "\(send.text)")
            let stats = try JSONValue(parsing: Data(send.stdout.utf8)).decode(MigrationStats.self)
            #expect(stats.memoryBytes == 64 << 20)
            #expect(!stats.rounds.isEmpty)
            #expect(arrivals.wait(count: 1))
            defer { arrivals.vms.forEach { $0.machine.stop() } }
            #expect(arrivals.vms.first?.name == "a")
            #expect(try box.psNames().isEmpty)
            // The detached process ends once its VM has left (a zombie waiting for its reaper counts as ended).
            func running() -> Bool {
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return false }
                return !stat[close...].hasPrefix(") Z") && !stat[close...].hasPrefix(") X")
            }
            #expect(Wait.until { !running() }, "the detached process \(pid) still runs after its VM left")
            let log = (try? String(contentsOfFile: box.runtime + "/vms/a.log", encoding: .utf8)) ?? ""
            #expect(log.contains("VM a migrated to 127.0.0.1:\(listener.port); it no longer runs here"), "\(log)")
        }

        @Test func sha256MatchesTheStandardVectors() {
            #expect(KernelDigest.hex(KernelDigest.sha256(Array("abc".utf8)))
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
            #expect(KernelDigest.hex(KernelDigest.sha256([]))
                == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            #expect(KernelDigest.hex(KernelDigest.sha256(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        }
    }
}
