import Core
import Foundation
import GuestImage
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// A failed migration loses nothing: the source keeps (or resumes) its VM, intact, and says
    /// why; a destination fed garbage rejects it and stays healthy. Fake peers are built from
    /// the real transport and frame layer.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct MigrationFailureTests {
        typealias M = MigrationTests

        /// A fake destination: TLS, HELLO_ACK for one stream, then `script` runs on the control stream.
        static func fakeReceiver(_ script: @escaping @Sendable (FrameChannel) throws -> Void) throws -> StreamListener {
            let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: M.pki.dst)
            Thread.detachNewThread {
                guard let stream = try? listener.accept() else { return }
                let channel = FrameChannel(stream)
                try? script(channel)
                stream.close()
            }
            return listener
        }

        static func handshake(_ c: FrameChannel) throws {
            guard case .hello = try c.receive() else { return }
        try c.send(.helloAck(HelloAck(version: 2, streams: 1, capabilities: [.zstd, .delta, .pvState])))
            guard case .machine = try c.receive() else { return }
        }

        static func expectSourceIntact(_ machine: Machine, _ console: WaitableConsole) throws {
            #expect(M.isRunning(machine), "the source VM is not running: \(String(describing: machine.exit))")
            #expect(M.progresses(machine), "the source guest does not make progress")
            let (pages, bad) = try M.selfcheck(machine, console)
            #expect(pages > 0 && bad == 0, "source self-check: \(pages) pages, \(bad) bad")
        }

        static func dirtySource() throws -> (Machine, WaitableConsole) {
            let (m, c) = try M.source("workload=dirty mib=32 passes=0 pattern=random rate=20000 progress=0")
            #expect(c.wait(for: "workload dirty"))
            // Something to migrate: the guest has dirtied a few thousand pages (its own count).
            #expect(m.waitForPagesWritten(beyond: 4000), "the guest wrote \(m.guestPagesWritten) pages")
            return (m, c)
        }

        @Test func receiverKilledMidStream() throws {
            let fake = try Self.fakeReceiver { c in
                try Self.handshake(c)
                for _ in 0..<3 { _ = try c.receive() } // a few page batches, then the receiver dies
            }
            defer { fake.close() }
            let (machine, console) = try Self.dirtySource()
            defer { machine.stop(); machine.waitForExit() }
            #expect(throws: MigrationError.self) {
                _ = try M.sender(machine) { $0.streams = 1 }.migrate(to: "127.0.0.1", port: fake.port, tls: M.pki.src)
            }
            try Self.expectSourceIntact(machine, console)
        }

        /// The cut comes while the guest is paused for stop-and-copy: the source must resume it.
        @Test func connectionCutDuringStopAndCopy() throws {
            let fake = try Self.fakeReceiver { c in
                try Self.handshake(c)
                while true { if case .state = try c.receive() { return } } // cut once the state arrives
            }
            defer { fake.close() }
            let (machine, console) = try Self.dirtySource()
            defer { machine.stop(); machine.waitForExit() }
            #expect(throws: MigrationError.self) {
                _ = try M.sender(machine) { $0.streams = 1 }.migrate(to: "127.0.0.1", port: fake.port, tls: M.pki.src)
            }
            try Self.expectSourceIntact(machine, console)
        }

        @Test func corruptedFrameFromTheDestination() throws {
            let fake = try Self.fakeReceiver { c in
                _ = try c.receive()
                let garbage = [UInt8](repeating: 0x5a, count: 64)
                try garbage.withUnsafeBytes { try c.stream.writeAll($0) }
            }
            defer { fake.close() }
            let (machine, console) = try Self.dirtySource()
            defer { machine.stop(); machine.waitForExit() }
            do {
                _ = try M.sender(machine).migrate(to: "127.0.0.1", port: fake.port, tls: M.pki.src)
                Issue.record("migrated to a peer that sends garbage")
            } catch {
                #expect(error.description.contains("magic"))
            }
            try Self.expectSourceIntact(machine, console)
        }

        /// A hostile source: a corrupted page batch is rejected by the destination, which then
        /// still receives a real migration.
        @Test func destinationRejectsCorruptedFramesAndStaysHealthy() throws {
            let arrivals = M.Arrivals()
            let listener = try M.listener(arrivals)
            defer { listener.close() }
            func fakeSender(_ afterMachine: (FrameChannel) throws -> Void) throws -> Frame? {
                let c = FrameChannel(try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: M.pki.src))
                defer { c.stream.close() }
            try c.send(.hello(Hello(minVersion: 2, maxVersion: 2, streams: 1, capabilities: [.zstd], migrationID: (0..<16).map { _ in .random(in: 0...255) })))
                _ = try c.receive()
                try c.send(.machine(MachineDescription(memoryBytes: 64 << 20, vcpus: 1, inKernelIRQChip: false,
                                                       kernelSHA256: [UInt8](repeating: 1, count: 32), name: "fake")))
                try afterMachine(c)
                return try? c.receive()
            }
            // A batch naming a page far outside the VM's memory.
            var bad: [UInt8] = [0, 0, 0, 0, 1, 0, 0, 0] + [UInt8](repeating: 0, count: 8)
            bad += [0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x10, 0, 0] + [UInt8](repeating: 0xab, count: 4096)
            let reply1 = try fakeSender { c in try c.send(.pages(flags: 0, payload: bad)) }
            guard case let .error(report1)? = reply1 else { Issue.record("no ERROR for a corrupt batch: \(String(describing: reply1))"); return }
        #expect(report1.code == .protocolViolation, "a malformed batch is the peer's protocol violation (code 1)")
            #expect(arrivals.waitForFailures(count: 1), "the destination did not report the rejected migration")
            // Still healthy: a real migration arrives.
        try M.expectArrival(at: listener.port, arrivals)
        }

        @Test func wrongDigestIsRejected() throws {
            let arrivals = M.Arrivals()
            let listener = try M.listener(arrivals)
            defer { listener.close() }
            // A real 64 MiB VM's state, sent with a digest that cannot match.
            let console = WaitableConsole()
            let vm = try Machine(configuration: .init(memorySize: 64 << 20, kernel: GuestImage.elf, commandLine: "workload=idle",
                                                      console: console))
            let state = try vm.saveState().encoded()
            let c = FrameChannel(try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: M.pki.src))
            defer { c.stream.close() }
            // PV_STATE: the state carries the PV section, which needs it (protocol.md §3.2).
            try c.send(.hello(Hello(minVersion: 2, maxVersion: 2, streams: 1, capabilities: [.pvState],
                                    migrationID: (0..<16).map { _ in .random(in: 0...255) })))
            _ = try c.receive()
            try c.send(.machine(MachineDescription(memoryBytes: 64 << 20, vcpus: 1, inKernelIRQChip: false,
                                                   kernelSHA256: [UInt8](repeating: 1, count: 32), name: "liar")))
            try c.send(.streamEnd(frames: 2))
            try c.send(.state(state))
        try c.send(.commit(digest: 0xdead_beef, pagesWithData: 1, stateDigest: StateDigest.compute(state)))
            guard case let .error(report) = try c.receive() else { Issue.record("no ERROR for a wrong digest"); return }
            #expect(report.code == .digestMismatch)
            #expect(arrivals.vms.isEmpty)
        }
    }
}
