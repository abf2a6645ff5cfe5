import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// A destination that shuts down between PREPARED and GO (protocol.md §3.6.8): the
    /// migration is fenced — "aborted" on record before the GO can be read — so the restarted
    /// listener answers RESOLVE with `aborted` (not `unknown`) and the VM runs only at the source.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct ListenerShutdownTests {
        typealias M = MigrationTests
        typealias F = CommitFaultTests

        @Test func shutdownBetweenPreparedAndGoFencesTheMigrationAndTheSourceKeepsTheOnlyCopy() throws {
            let outcomes = NSTemporaryDirectory() + "pvmigrate-shutdown-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            defer { unlink(outcomes) }
            let arrivals = M.Arrivals()
            let listener = try F.listener(arrivals, tls: .insecure, outcomes: outcomes)
            defer { listener.close() }
            let port = listener.port
            let fenced = Locked<(fenced: Int, settled: Bool)?>(nil)
            // When the source's GO reaches the proxy, the destination is `prepared`: shut it
            // down there (what SIGTERM does), then the GO is gone with the connection.
            let proxy = try FaultProxy(upstream: port, rules: [
                FaultProxy.Rule(.toDestination, frameType: F.go, .hook { fenced.withLock { $0 = listener.shutDown(timeout: 20) } }),
            ])
            defer { proxy.close() }
            let (machine, console) = try M.source("workload=dirty mib=16 passes=0 pattern=random rate=20000 progress=0")
            defer { if machine.exit == nil { machine.stop(); machine.waitForExit() } }
            let sender = M.sender(machine) {
                $0.streams = 1
                $0.timeout = F.timeout
                $0.downtimeTarget = F.downtimeTarget
            }
            var unresolved: UnresolvedMigration?
            do {
                _ = try sender.migrate(to: "127.0.0.1", port: proxy.port, tls: .insecure)
                Issue.record("the migration succeeded although the destination shut down before GO")
            } catch let MigrationError.unresolved(u) {
                unresolved = u
            } catch {
                Issue.record("expected the source to be unresolved after writing GO, got: \(error)")
            }
            #expect(fenced.value?.fenced == 1 && fenced.value?.settled == true, "shutDown: \(String(describing: fenced.value))")
            #expect(arrivals.vms.isEmpty, "the guest started at the destination")
            let u = try #require(unresolved)
            #expect(machine.vcpus.allSatisfy { $0.state == .paused }, "an unresolved VM must stay paused at the source")

            // The listener restarts on its port with the same outcome table; RESOLVE says aborted.
            let restarted = try MigrationListener(host: "127.0.0.1", port: port, tls: .insecure, options: {
                var o = ReceiverOptions()
                o.outcomes = try OutcomeTable(path: outcomes)
                return o
            }())
            restarted.serve(onArrival: { vm in vm.machine.stop() }, onFailure: { _ in })
            defer { restarted.close() }
            #expect(try F.resolve(sender, u) == .aborted, "the fence was not recorded (unknown means nothing was on record)")
            try MigrationFailureTests.expectSourceIntact(machine, console)
        }
    }
}
