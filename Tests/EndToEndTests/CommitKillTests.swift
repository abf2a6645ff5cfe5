import Control
import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// kill -9 of the destination's listener in the middle of the commit (protocol.md §3.6,
    /// docs/commit-protocol-tests.md), with the real `pvmigrate` binary on two runtime
    /// directories and a `FaultProxy` between `send` and `listen` that runs the kill while it
    /// holds a frame. The source must never resume on its own: it reports "unresolved" (the VM
    /// paused) and settles by RESOLVE once the listener is back with the same runtime directory.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct CommitKillTests {
        typealias H = ListenSendTests
        static let go: UInt16 = 13, done: UInt16 = 14

        final class Destination: @unchecked Sendable {
            let hosts: H.Hosts
            let port: UInt16
            private(set) var listener: H.Background

            init(_ hosts: H.Hosts) throws {
                self.hosts = hosts
                (listener, port) = try hosts.listen(port: 0, ["--insecure"])
            }

            func kill9() {
                kill(listener.process.processIdentifier, SIGKILL)
                listener.process.waitUntilExit()
            }

            /// The same port again: the source resolves at the address it migrated to.
            func restart() throws { (listener, _) = try hosts.listen(port: port, ["--insecure"]) }

            /// Ends what the test started even if a reference outlives it (the proxy's threads):
            /// the listeners, the VM on either side.
            func cleanUp() {
                for l in hosts.listeners { _ = l.terminate(timeout: 10) }
                for side in ["src", "dst"] { _ = try? hosts.run(side, ["stop", "vm"], timeout: 10) }
            }
        }

        /// Polls `status VM` on the source until `accept` holds (bounded); returns the last status.
        static func awaitSourceStatus(_ hosts: H.Hosts, timeout: Double = Wait.hangBound,
                                      _ accept: (JSONValue?) -> Bool) throws -> JSONValue? {
            var last = try hosts.status("src", "vm")
            try Wait.until(timeout: timeout) {
                last = try hosts.status("src", "vm")
                return accept(last)
            }
            return last
        }

        /// Runs `send` through a proxy whose `rule` kills the listener; checks the source reports
        /// the VM paused and unresolved; restarts the listener. Returns the migration id.
        static func sendAndKill(_ hosts: H.Hosts, _ destination: Destination, frame: UInt16,
                                _ direction: FaultProxy.Direction) throws -> (String, FaultProxy) {
            let proxy = try FaultProxy(upstream: destination.port, rules: [
                FaultProxy.Rule(direction, frameType: frame, .hook { [weak destination] in destination?.kill9() }),
            ])
            try hosts.startVM("vm")
            let sent = try hosts.run("src", ["send", "127.0.0.1:\(proxy.port)", "vm", "--insecure", "--max-time", "60"], timeout: 120)
            #expect(sent.status != 0, "send succeeded although the listener was killed: \(sent.text)")
            #expect(sent.text.contains("PAUSED"), "send does not say the VM is paused: \(sent.text)")
            #expect(proxy.firedFaults.count == 1, "fired: \(proxy.firedFaults)")
            let status = try #require(try hosts.status("src", "vm"), "the source lost the VM")
            let id = try #require(status["unresolved"]?["migration_id"]?.string, "no unresolved migration in \(status)")
            #expect(status["state"]?.string == "unresolved", "\(status)")
            try destination.restart()
            return (id, proxy)
        }

        /// Killed after the destination recorded "started" and started the guest (the kill runs
        /// while the proxy holds DONE): the VM died with the listener process — a crash of the host
        /// running it, which no migration protocol undoes. The source must not resume its stale
        /// copy: it resolves to "started" from the restarted listener's persisted record and stops.
        @Test func listenerKilledAfterStartingResolvesToStartedAndTheSourceStops() throws {
            let hosts = try H.Hosts()
            let destination = try Destination(hosts)
            defer { destination.cleanUp() }
            let (id, proxy) = try Self.sendAndKill(hosts, destination, frame: Self.done, .toSource)
            defer { proxy.close() }
            let outcomes = (try? String(contentsOfFile: "\(hosts.root)/dst/outcomes", encoding: .utf8)) ?? ""
            #expect(outcomes.contains("started \(id)"), "the destination's table: \(outcomes)")
            let last = try Self.awaitSourceStatus(hosts) { $0 == nil }
            #expect(last == nil, "the source did not stop the VM after the destination said started: \(String(describing: last))")
            #expect(destination.listener.wait(for: "RESOLVE \(id)"), "\(destination.listener.text)")
            #expect(destination.listener.stdout.contains(": started"), "\(destination.listener.text)")
            #expect(try hosts.psNames("src").isEmpty)
            #expect(try hosts.psNames("dst").isEmpty, "a VM appeared at the restarted destination")
        }

        /// Killed while the proxy holds GO: the destination never decided, so after the restart it
        /// answers "unknown" and the source resumes — the VM runs at the source only, intact.
        @Test func listenerKilledBeforeGoResolvesToUnknownAndTheSourceResumes() throws {
            let hosts = try H.Hosts()
            let destination = try Destination(hosts)
            defer { destination.cleanUp() }
            let (id, proxy) = try Self.sendAndKill(hosts, destination, frame: Self.go, .toDestination)
            defer { proxy.close() }
            // Ask on demand too (the automatic attempts may win the race: both settle the same way).
            _ = try hosts.run("src", ["recover", "vm"])
            let last = try Self.awaitSourceStatus(hosts) { $0?["state"]?.string == "running" }
            #expect(last?["state"]?.string == "running", "\(String(describing: last))")
            #expect(destination.listener.wait(for: "RESOLVE \(id)"), "\(destination.listener.text)")
            #expect(destination.listener.stdout.contains(": unknown"), "\(destination.listener.text)")
            #expect(try hosts.psNames("dst").isEmpty, "the VM also runs at the destination")
            let check = try hosts.run("src", ["selfcheck", "vm"])
            #expect(check.status == 0 && check.stdout.contains(" 0 bad"), "\(check.text)")
            #expect(!FileManager.default.fileExists(atPath: "\(hosts.root)/src/vms/vm.handover"), "the hand-over record was left")
            // Settled: nothing left to recover, and a new migration may start again.
            let again = try hosts.run("src", ["recover", "vm"])
            #expect(again.status != 0 && again.stderr.contains("no unresolved migration"), "\(again.text)")
            let both = try hosts.run("src", ["recover", "vm", "--force-resume", "--force-stop"])
            #expect(both.status != 0 && both.text.contains("exclude each other"), "\(both.text)")
        }
    
        struct Held: Sendable, CustomTestStringConvertible {
            var name: String
            var direction: FaultProxy.Direction
            var frame: UInt16
            var occurrence = 1
            var testDescription: String { "listener killed while \(name) is held" }
        }

        /// Before the hand-over: nothing was decided at the destination.
        static let beforeHandOver: [Held] = [
            Held(name: "the 3rd PAGES", direction: .toDestination, frame: 5, occurrence: 3),
            Held(name: "STATE", direction: .toDestination, frame: 7),
            Held(name: "COMMIT", direction: .toDestination, frame: 8),
            Held(name: "PREPARED", direction: .toSource, frame: 12),
        ]

        /// Killed before the source read PREPARED: the source may still resume on its own
        /// (§3.6.3), and must — the VM keeps running there, intact, never "unresolved"; the
        /// restarted listener has decided nothing and receives the VM on the next try.
        @Test(arguments: beforeHandOver)
        func listenerKilledBeforeTheHandOverLeavesTheVMRunningAtTheSource(_ held: Held) throws {
            let hosts = try H.Hosts()
            let destination = try Destination(hosts)
            defer { destination.cleanUp() }
            let proxy = try FaultProxy(upstream: destination.port, rules: [
                FaultProxy.Rule(held.direction, frameType: held.frame, occurrence: held.occurrence,
                                .hook { [weak destination] in destination?.kill9() }),
            ])
            defer { proxy.close() }
            try CommitSourceKillTests.startVM(hosts, "vm")
            let sent = try hosts.run("src", ["send", "127.0.0.1:\(proxy.port)", "vm", "--insecure", "--max-time", "60", "--downtime-ms", "5000"], timeout: 120)
            #expect(sent.status != 0, "send succeeded although the listener was killed: \(sent.text)")
            #expect(!sent.text.contains("PAUSED"), "the source paused the VM before any hand-over: \(sent.text)")
            try #require(proxy.firedFaults.count == 1, "the kill never ran (fired: \(proxy.firedFaults)); send said: \(sent.text)")
            let status = try #require(try hosts.status("src", "vm"), "the source lost the VM")
            #expect(status["state"]?.string == "running", "\(status)")
            let check = try hosts.run("src", ["selfcheck", "vm"])
            #expect(check.status == 0 && check.stdout.contains(" 0 bad"), "\(check.text)")
            try destination.restart()
            let outcomes = (try? String(contentsOfFile: "\(hosts.root)/dst/outcomes", encoding: .utf8)) ?? ""
            #expect(!outcomes.contains("started"), "the killed listener decided started: \(outcomes)")
            let again = try hosts.run("src", ["send", "127.0.0.1:\(destination.port)", "vm", "--insecure", "--max-time", "60", "--downtime-ms", "5000"],
                                      timeout: 120)
            #expect(again.status == 0, "the restarted listener does not receive: \(again.text)")
            #expect(try hosts.psNames("dst") == ["vm"])
            #expect(try hosts.psNames("src").isEmpty)
        }
    }
}
