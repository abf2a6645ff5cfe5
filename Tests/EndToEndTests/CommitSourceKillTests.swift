import Control
import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// kill -9 of the SOURCE — the VM's own process, which holds the guest and runs the
    /// migration (`send` only asks it to) — at each phase (docs/commit-protocol-tests.md), with
    /// the real binary on two runtime directories and a `FaultProxy` that runs the kill while it
    /// holds one frame (then drops it). The guest dies with its process at the source: that is a
    /// crash of the host running it, which no protocol undoes. What the protocol must ensure:
    /// the destination runs the guest only if it had decided "started" (GO arrived), never a
    /// second copy; it records what it decided; and both hosts keep serving.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct CommitSourceKillTests {
        typealias H = ListenSendTests

        struct Phase: Sendable, CustomTestStringConvertible {
            var name: String
            var direction: FaultProxy.Direction
            var frame: UInt16
            var occurrence = 1
            /// Whether the destination must end up running the guest (DONE held: GO arrived).
            var startedThere = false
            /// Whether the source had recorded the hand-over (PREPARED received).
            var handedOver = false
            var testDescription: String { "source killed while \(name) is held" }
        }

        static let phases: [Phase] = [
            Phase(name: "HELLO", direction: .toDestination, frame: 1),
            Phase(name: "the 3rd PAGES", direction: .toDestination, frame: 5, occurrence: 3),
            Phase(name: "STATE", direction: .toDestination, frame: 7),
            Phase(name: "COMMIT", direction: .toDestination, frame: 8),
            Phase(name: "PREPARED", direction: .toSource, frame: 12),
            Phase(name: "GO", direction: .toDestination, frame: 13, handedOver: true),
            Phase(name: "DONE", direction: .toSource, frame: 14, startedThere: true, handedOver: true),
        ]

        /// A VM that converges quickly even on a loaded machine (a few hundred dirty pages per
        /// second over 8 MiB), sent with `--downtime-ms 5000`: the faults are the subject, not
        /// convergence (on a 2-core machine at load 15 the predicted fixed pause alone passed 1 s).
        static func startVM(_ hosts: H.Hosts, _ name: String) throws {
            let r = try hosts.run("src", ["run", "--name", name, "--detach", "--memory", "64M", "--cmdline",
                                          "workload=dirty mib=8 passes=0 pattern=random rate=300 progress=0"])
            #expect(r.status == 0, "run --detach failed: \(r.text)")
        }

        @Test(arguments: phases)
        func theGuestRunsAtTheDestinationOnlyIfItDecidedStarted(_ phase: Phase) throws {
            let hosts = try H.Hosts()
            // --commit-timeout: a short GO deadline, which the connection's end beats here.
            let (listener, port) = try hosts.listen(port: 0, ["--insecure", "--commit-timeout", "3"])
            defer {
                _ = listener.terminate(timeout: 10)
                for (side, name) in [("src", "vm"), ("src", "next"), ("dst", "vm"), ("dst", "next")] {
                    _ = try? hosts.run(side, ["stop", name], timeout: 10)
                }
            }
            #expect(listener.wait(for: "3.00 s for GO"), "the limits line does not show --commit-timeout: \(listener.text)")
            try Self.startVM(hosts, "vm")
            let pid = try #require(try hosts.status("src", "vm")?["pid"]?.int64.map { pid_t($0) }, "no pid in status")
            let proxy = try FaultProxy(upstream: port, rules: [
                FaultProxy.Rule(phase.direction, frameType: phase.frame, occurrence: phase.occurrence, .hook { kill(pid, SIGKILL) }),
            ])
            defer { proxy.close() }
            let sent = try hosts.run("src", ["send", "127.0.0.1:\(proxy.port)", "vm", "--insecure", "--max-time", "60", "--downtime-ms", "5000"], timeout: 120)
            #expect(sent.status != 0, "send succeeded although the VM's process was killed: \(sent.text)")
            try #require(proxy.firedFaults.count == 1, "the kill never ran (fired: \(proxy.firedFaults)); send said: \(sent.text)")
            #expect(Wait.until { kill(pid, 0) != 0 }, "the source's VM process survived SIGKILL")

            // The destination settles by itself (the connection ended): it runs the guest only
            // after GO, and says what it did.
            // Before its first frame a connection is not yet a migration: it is "rejected".
            let event = phase.startedThere ? "arrived" : phase.frame == 1 ? "rejected a connection" : "migration failed"
            #expect(listener.wait(for: event), "the destination did not log '\(event)': \(listener.text)")
            let outcomes = (try? String(contentsOfFile: "\(hosts.root)/dst/outcomes", encoding: .utf8)) ?? ""
            let record = "\(hosts.root)/src/vms/vm.handover"
            if phase.handedOver {
                // The source recorded the hand-over before GO; it names the id the destination decided.
                let text = try String(contentsOfFile: record, encoding: .utf8)
                let json = try JSONValue(parsing: Data(text.utf8))
                let id = try #require(json["migration_id"]?.string, "no id in \(text)")
                let decision = phase.startedThere ? "started \(id)" : "aborted \(id)"
                #expect(outcomes.contains(decision), "expected '\(decision)' in the destination's table: \(outcomes)")
            } else {
                #expect(!FileManager.default.fileExists(atPath: record), "a hand-over record before PREPARED")
                #expect(!outcomes.contains("started"), "the destination decided started without GO: \(outcomes)")
            }
            if phase.startedThere {
                #expect(try hosts.psNames("dst") == ["vm"], "the guest does not run at the destination")
                let check = try hosts.run("dst", ["selfcheck", "vm"])
                #expect(check.status == 0 && check.stdout.contains(" 0 bad"), "\(check.text)")
            } else {
                #expect(try hosts.psNames("dst").isEmpty, "a VM runs at the destination without GO")
            }
            #expect(!(try hosts.psNames("src").contains("vm")), "the killed VM is still listed at the source")

            // Both hosts keep serving: a new VM at the source migrates straight to the listener.
            let r = try hosts.run("src", ["run", "--name", "next", "--detach", "--memory", "64M", "--cmdline", "workload=idle"])
            #expect(r.status == 0, "the source host cannot start a VM: \(r.text)")
            let again = try hosts.run("src", ["send", "127.0.0.1:\(port)", "next", "--insecure", "--max-time", "60", "--downtime-ms", "5000"], timeout: 120)
            #expect(again.status == 0, "the destination no longer receives: \(again.text)")
            #expect(try hosts.psNames("dst").contains("next"))
        }
    }
}
