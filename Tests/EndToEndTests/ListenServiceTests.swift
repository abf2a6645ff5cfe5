#if canImport(Glibc)
import Glibc
#endif
import Config
import Control
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// `listen` as a service (issue 16): systemd notifications over a real datagram socket,
    /// the certificate reload on SIGHUP, job state while a `send` runs and after it ends, and
    /// the clean shutdown on SIGTERM (protocol.md §3.6.8, §4.1, §4.2).
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct ListenServiceTests {
        typealias Hosts = ListenSendTests.Hosts

        /// Copies HOSTS.root/FROM's TLS files into HOSTS.root/live (the listener's directory).
        static func install(_ hosts: Hosts, from: String) throws {
            let live = "\(hosts.root)/live"
            try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
            for file in ["ca.pem", "cert.pem", "key.pem"] {
                try? FileManager.default.removeItem(atPath: "\(live)/\(file)")
                try FileManager.default.copyItem(atPath: "\(hosts.root)/\(from)/\(file)", toPath: "\(live)/\(file)")
            }
        }

        /// `job NAME --json` on the source, decoded (nil: no such VM).
        static func job(_ hosts: Hosts, _ name: String) throws -> MigrationJob? {
            let r = try hosts.run("src", ["job", name, "--json"])
            guard r.status == 0 else { return nil }
            return try JSONValue(parsing: Data(r.stdout.utf8)).decode(MigrationJob.self)
        }

        /// `job --listener PATH --json`, decoded.
        static func arrivals(_ hosts: Hosts, _ path: String) throws -> [ArrivalJob] {
            let r = try hosts.run("dst", ["job", "--listener", path, "--json"])
            #expect(r.status == 0, "job --listener failed: \(r.text)")
            return try JSONValue(parsing: Data(r.stdout.utf8)).decode(ArrivalJobs.self).jobs
        }

        /// The downtime target of this suite's sends: generous, the pause is not the subject (on a
        /// loaded 2-core machine the commit's fixed cost alone exceeds the default 50 ms).
        static let relaxed = ["--downtime-ms", "2000"]

        @Test func reloadWithNewCertificatesKeepsTheRunningVMAndAcceptsTheNextMigrationOfTheNewCA() throws {
            let hosts = try Hosts()
            try hosts.certs("old", hosts: ["src", "dst=127.0.0.1"])
            try hosts.certs("new", hosts: ["src", "dst=127.0.0.1"])
            try Self.install(hosts, from: "old/dst")
            let notify = try NotifySocket(abstract: true)
            let control = "\(hosts.root)/listener.sock"
            let (listener, port) = try hosts.listen(tlsDir: "live", ["--control", control],
                                                    environment: ["NOTIFY_SOCKET": notify.name])
            let ready = notify.receive(until: "READY=1")
            #expect(ready?.joined().contains("STATUS=listening on 127.0.0.1:\(port)") == true, "\(ready ?? []) \(listener.text)")

            try hosts.startVM("a")
            let first = try hosts.send("a", port: port, tlsDir: "old/src", Self.relaxed)
            #expect(first.status == 0, "send a failed: \(first.text)")
            let done = try Self.arrivals(hosts, control).filter { $0.name == "a" }
            #expect(done.count == 1 && done.first?.result == .completed && done.first?.phase == "started"
                && (done.first?.pages ?? 0) > 0, "the listener's jobs after the arrival: \(done)")

            // Rotate to another CA and reload: RELOADING=1, then READY=1 once the files are in use.
            try Self.install(hosts, from: "new/dst")
            kill(listener.process.processIdentifier, SIGHUP)
            let reloaded = notify.receive(until: "READY=1")
            #expect(reloaded?.first?.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") == true, "\(reloaded ?? []) \(listener.text)")
            #expect(listener.wait(for: "reload: certificates read again"), "\(listener.text)")

            // The VM that arrived before the reload still runs (its guest makes progress).
            let before = try #require(try hosts.status("dst", "a"), "VM a is gone after the reload")["pv"]?["pages_written"]?.uint64 ?? 0
            var after: UInt64 = 0
            #expect(try Wait.until {
                after = try hosts.status("dst", "a")?["pv"]?["pages_written"]?.uint64 ?? 0
                return after > before
            }, "VM a makes no progress after the reload (\(before) → \(after))")

            // The old CA's certificate is refused now (the reload replaces the trust anchor;
            // docs/operations.md "Reload"); the VM stays at the source, its job says why.
            try hosts.startVM("b")
            let refused = try hosts.send("b", port: port, tlsDir: "old/src", Self.relaxed)
            #expect(refused.status != 0, "a source of the old CA was accepted after the reload: \(refused.text)")
            #expect(try hosts.status("src", "b")?["state"]?.string == "running")
            let failed = try #require(try Self.job(hosts, "b"), "job b")
            #expect(failed.phase == .failed && failed.error?.isEmpty == false, "\(failed)")

            let second = try hosts.send("b", port: port, tlsDir: "new/src", Self.relaxed)
            #expect(second.status == 0, "send with the new CA failed: \(second.text)")
            #expect(try hosts.psNames("dst").sorted() == ["a", "b"], "\(listener.text)")

            #expect(listener.terminate() == 0, "\(listener.text)")
            #expect(notify.receive(until: "STOPPING=1") != nil, "no STOPPING=1: \(listener.text)")
        }

        /// SIGHUP with `--config` (docs/operations.md "Reload"): the allowed sources and the
        /// memory limit change for the next migration, a restart-only key is named and kept,
        /// and a file that no longer parses changes nothing.
        @Test func reloadReadsTheConfigAgainAndAppliesTheLiveLimitsOnly() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["src", "dst=127.0.0.1"])
            let config = "\(hosts.root)/listen.toml"
            func write(_ text: String) throws { try text.write(toFile: config, atomically: true, encoding: .utf8) }
            try write("allow-source = [\"other\"]\nmax-streams = 4\n")
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst", ["--config", config])
            var reloads = 0
            func reload() -> String {
                reloads += 1
                kill(listener.process.processIdentifier, SIGHUP)
                let lines = { listener.stdout.split(separator: "\n").filter { $0.contains("reload: ") } }
                #expect(Wait.until { lines().count >= reloads }, "reload \(reloads) was not logged: \(listener.text)")
                return lines().count >= reloads ? String(lines()[reloads - 1]) : ""
            }
            func refusedAndKept(_ why: String) throws {
                let r = try hosts.send("r", port: port, tlsDir: "pki/src", Self.relaxed)
                #expect(r.status != 0 && r.text.contains(why), "send should be refused (\(why)): \(r.text)")
                #expect(try hosts.status("src", "r")?["state"]?.string == "running", "the source lost VM r")
            }
            try hosts.startVM("r")
            try refusedAndKept("src") // its certificate's name is not allowed

            try write("allow-source = [\"src\"]\nmax-memory = \"64M\"\nmax-streams = 8\n")
            let applied = reload()
            #expect(applied.contains("now allow-source src, max-memory 64") && applied.contains("kept until a restart: max-streams"),
                    "\(applied)")
            try refusedAndKept("--max-memory") // the name passes now; the 128 MiB VM is over the new limit

            try write("allow-source = [\"src\"]\nmax-memory = \"64M\"\nmax-incoming = \"two\"\n")
            let failed = reload()
            #expect(failed.contains("failed, every setting stays as it was") && failed.contains("line 3"), "\(failed)")
            try refusedAndKept("--max-memory")

            try write("allow-source = [\"src\"]\nmax-streams = 4\n")
            let restored = reload()
            #expect(restored.contains("max-memory this host's memory") && !restored.contains("restart"), "\(restored)")
            let moved = try hosts.send("r", port: port, tlsDir: "pki/src", Self.relaxed)
            #expect(moved.status == 0, "send after the reloads failed: \(moved.text)")
            #expect(try hosts.psNames("dst") == ["r"], "\(listener.text)")
            #expect(listener.terminate() == 0, "\(listener.text)")
        }

        @Test func jobStateFollowsASendAndSigtermFailsTheArrivalWhileTheSourceKeepsTheVM() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["src", "dst=127.0.0.1"])
            let control = "\(hosts.root)/listener.sock"
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst", ["--control", control])
            try hosts.startVM("j")
            #expect(try Self.job(hosts, "j")?.phase == MigrationJob.Phase.none, "a VM that never migrated has no job")
            // Once the guest has written its 16 MiB working set, it dirties it faster (4000
            // pages/s) than the capped, uncompressed link carries (4 MiB/s): the migration stays
            // in pre-copy until the listener stops, whatever the machine's speed.
            #expect(try Wait.until { try hosts.status("src", "j")?["pv"]?["passes"]?.uint64 ?? 0 >= 1 },
                    "the guest never finished a pass over its working set")
            let send = try ListenSendTests.Background(
                ["send", "127.0.0.1:\(port)", "j", "--tls-dir", "\(hosts.root)/pki/src", "--bandwidth", "4M",
                 "--compression", "off", "--max-time", "120"], environment: hosts.environment("src"))
            var running: MigrationJob?
            #expect(try Wait.until {
                running = try Self.job(hosts, "j")
                return running?.phase == .precopy && (running?.bytes ?? 0) > 0
            }, "the source's job never showed pre-copy with bytes sent: \(String(describing: running)) \(send.text)")
            #expect(running?.destination == "127.0.0.1:\(port)" && (running?.elapsedSeconds ?? 0) > 0, "\(String(describing: running))")
            var arriving: [ArrivalJob] = []
            #expect(try Wait.until {
                arriving = try Self.arrivals(hosts, control)
                return arriving.contains { $0.result == nil && $0.phase == "receiving" && $0.pages > 0 }
            }, "the listener's jobs never showed the arrival receiving pages: \(arriving)")
            #expect(arriving.first?.name == "j" && arriving.first?.memoryBytes == 128 << 20, "\(arriving)")

            // SIGTERM while pages arrive: the arrival is fenced and fails, the listener exits 0,
            // the source keeps (and runs) its VM, and its job says the migration failed.
            #expect(listener.terminate() == 0, "\(listener.text)")
            #expect(listener.stdout.contains("fenced"), "\(listener.text)")
            // The source finds out by itself (a write or read on its streams fails): wait for
            // that; a signal to `send` would cancel the migration instead.
            #expect(Wait.until { !send.process.isRunning }, "send did not end after the listener stopped: \(send.text)")
            #expect(send.terminate(timeout: Wait.hangBound) != 0, "send succeeded although the listener stopped: \(send.text)")
            #expect(send.text.contains("shutting down") || send.text.contains("closed") || send.text.contains("reset"),
                    "send does not say why it failed: \(send.text)")
            let after = try #require(try Self.job(hosts, "j"), "VM j is gone from the source")
            #expect(after.phase == .failed && after.error?.isEmpty == false && (after.bytes ?? 0) > 0, "\(after)")
            #expect(try hosts.status("src", "j")?["state"]?.string == "running")
            #expect(try hosts.psNames("dst").isEmpty)
        }
    }
}

extension EndToEnd {
    /// `listen --config FILE` through the real binary (no VM needed).
    @Suite struct ListenConfigCLITests {
        @Test func everyListenFlagHasAConfigKey() throws {
            let r = try PVMigrateBinary.run(["listen", "--experimental-dump-help"], runtimeDirectory: "/tmp", timeout: 30)
            #expect(r.status == 0, "\(r.text)")
            let help = try JSONValue(parsing: Data(r.stdout.utf8))
            let arguments = try #require(help["command"]?["arguments"]?.array, "no arguments in the dumped help: \(r.stdout.prefix(300))")
            let flags = arguments.compactMap { $0["names"]?.array?.first { $0["kind"]?.string == "long" }?["name"]?.string }
            #expect(flags.contains("max-incoming"), "the dump's format changed: \(flags)")
            let missing = Set(flags).subtracting(["config", "version", "help"]).subtracting(ListenConfig.schema.keys)
            #expect(missing.isEmpty, "listen flags without a config key (add them to ListenConfig.schema): \(missing.sorted())")
            let stale = Set(ListenConfig.schema.keys).subtracting(flags)
            #expect(stale.isEmpty, "config keys without a listen flag: \(stale.sorted())")
        }

        @Test func theFileSetsTheFlagsAndTheCommandLineWins() throws {
            let hosts = try ListenSendTests.Hosts()
            try hosts.certs("pki", hosts: ["dst=127.0.0.1"])
            let config = "\(hosts.root)/listen.toml"
            try """
                # the listener of this test
                tls-dir = "\(hosts.root)/pki/dst"
                max-incoming = 3
                max-pending = 7
                commit-timeout = 12.5
                """.write(toFile: config, atomically: true, encoding: .utf8)
            let (listener, _) = try hosts.listen(port: 0, ["--config", config, "--max-incoming", "2"])
            #expect(listener.wait(for: "limits: "), "\(listener.text)")
            #expect(listener.stdout.contains("limits: 2 migrations at once") && listener.stdout.contains("7 pending connections")
                && listener.stdout.contains("12.50 s for GO"), "\(listener.text)")
            #expect(listener.terminate() == 0, "\(listener.text)")

            try "max-incoming = 3\nmax-pendin = 7\n".write(toFile: config, atomically: true, encoding: .utf8)
            let bad = try hosts.run("dst", ["listen", "--config", config], timeout: 30)
            #expect(bad.status != 0 && bad.stderr.contains("\(config) line 2: unknown key \"max-pendin\""), "\(bad.text)")
        }
    }
}
