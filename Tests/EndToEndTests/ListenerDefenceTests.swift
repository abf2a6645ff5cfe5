import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// The listener against hostile or greedy peers (protocol.md §3.1.1), on real KVM, real
    /// mutual TLS and real loopback sockets: idle connections cannot stall it, admission limits
    /// refuse with a reason the source reports, a trickling peer is dropped, and errors carry
    /// the right code and reason.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct ListenerDefenceTests {
        typealias M = MigrationTests
        typealias F = MigrationFailureTests

        static func listener(_ arrivals: M.Arrivals, _ configure: (inout ReceiverOptions) -> Void) throws -> MigrationListener {
            var options = ReceiverOptions()
            options.console = { _ in WaitableConsole() }
            options.hostedMemory = { arrivals.condition.withLock { arrivals.vms.reduce(0) { $0 + $1.machine.memory.size } } }
            configure(&options)
            let l = try MigrationListener(host: "127.0.0.1", port: 0, tls: M.pki.dst, options: options)
            l.serve(onArrival: { vm in arrivals.condition.withLock { arrivals.vms.append(vm); arrivals.condition.broadcast() } },
                    onFailure: { why in arrivals.condition.withLock { arrivals.failures.append(why); arrivals.condition.broadcast() } })
            return l
        }

        /// A fake source's control stream after HELLO → HELLO_ACK (admitted).
        static func admittedFakeSource(port: UInt16, streams: UInt32 = 1) throws -> (FrameChannel, [UInt8]) {
            let c = FrameChannel(try StreamConnector.connect(host: "127.0.0.1", port: port, mode: M.pki.src))
            c.stream.setTimeout(seconds: 20)
            let id = (0..<16).map { _ in UInt8.random(in: 0...255) }
            try c.send(.hello(Hello(minVersion: 2, maxVersion: 2, streams: streams, capabilities: [.zstd], migrationID: id)))
            let reply = try c.receive()
            guard case .helloAck = reply else { throw MigrationError.wire(.unexpected(frame: reply.name, state: "test: HELLO_ACK")) }
            return (c, id)
        }

        static func describe(_ memoryBytes: UInt64, name: String = "fake") -> Frame {
            .machine(MachineDescription(memoryBytes: memoryBytes, vcpus: 1, inKernelIRQChip: false,
                                        kernelSHA256: [UInt8](repeating: 1, count: 32), name: name))
        }

        /// `migrate` fails with the destination's ERROR: code resources, a reason naming the limit.
        static func expectRefusal(_ phrases: String..., migrate: () throws -> Void) {
            do {
                try migrate()
                Issue.record("the migration was admitted; expected a refusal mentioning \(phrases)")
            } catch {
                guard case let .peer(report)? = error as? MigrationError else {
                    Issue.record("not the destination's reason: \(error)")
                    return
                }
                #expect(report.code == .resources)
                #expect(phrases.allSatisfy { report.reason.contains($0) }, "\(report.reason)")
            }
        }

        /// A PAGES payload of one ZERO page (protocol.md §3.3).
        static let oneZeroPage: [UInt8] = [0, 0, 0, 0, 1, 0, 0, 0] + [UInt8](repeating: 0, count: 8 + 16)

        static func idleConnections(_ count: Int, port: UInt16) throws -> [ByteStream] {
            // Plain TCP, never a byte: what a slowloris or a port scanner leaves behind.
            try (0..<count).map { _ in try StreamConnector.connect(host: "127.0.0.1", port: port, mode: .insecure) }
        }

        @Test func legitimateMigrationCompletesWhile200IdleConnectionsAreOpen() throws {
            let arrivals = M.Arrivals()
            // A 60 s handshake deadline: an accept loop that waited on each idle peer in turn
            // would make the migration below wait 200 × 60 s, far past the 30 s bound.
            let listener = try Self.listener(arrivals) { $0.listener.handshakeTimeout = 60 }
            defer { listener.close() }
            let idle = try Self.idleConnections(200, port: listener.port)
            defer { idle.forEach { $0.close() } }
            let (machine, _) = try M.source("workload=idle")
            let started = ContinuousClock.now
            let stats = try M.sender(machine).migrate(to: "127.0.0.1", port: listener.port, tls: M.pki.src)
            #expect(arrivals.wait(count: 1, timeout: 30), "the VM did not arrive; failures: \(arrivals.failures)")
            let elapsed = (ContinuousClock.now - started).components.seconds
            #expect(elapsed < 30, "the migration took \(elapsed) s with 200 idle connections open")
            #expect(machine.waitForExit() == .stopped)
            arrivals.vms.forEach { $0.machine.stop(); $0.machine.waitForExit() }
            #expect(arrivals.vms.first?.stats.digest == stats.digest)
        }

        @Test func connectionsOverThePendingLimitAreClosedAtOnce() throws {
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals) {
                $0.listener.handshakeTimeout = 60
                $0.listener.maxPendingConnections = 4
            }
            defer { listener.close() }
            let idle = try Self.idleConnections(4, port: listener.port)
            let excess = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: .insecure)
            defer { excess.close() }
            excess.setTimeout(seconds: 20)
            // Closed at once — long before the 60 s handshake deadline (the read timeout is 20 s).
            #expect(throws: TransportError.peerClosed) { _ = try excess.read(count: 1) }
            #expect(arrivals.waitForFailure(containing: "the limit: listen --max-pending"),
                    "no log line for the refused connection: \(arrivals.failures)")
            // The idle ones go; their slots come back (each failed handshake is logged).
            let before = arrivals.condition.withLock { arrivals.failures.count }
            idle.forEach { $0.close() }
            #expect(arrivals.waitForFailures(count: before + 4, timeout: 20), "the idle connections' slots: \(arrivals.failures)")
            try M.expectArrival(at: listener.port, arrivals)
        }

        @Test func firstFrameHasADeadline() throws {
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals) { $0.listener.handshakeTimeout = 1 }
            defer { listener.close() }
            // Handshaken, then a byte of a frame header now and then: each read makes progress,
            // so only a deadline ends it.
            let c = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: M.pki.src)
            defer { c.close() }
            #expect(arrivals.waitForFailure(containing: "sent no HELLO or JOIN within", trickle: { try c.write([0x50]) }),
                    "no deadline on the first frame: \(arrivals.failures)")
        }

        @Test func extraMigrationIsRefusedAtMaxIncomingAndTheVMStays() throws {
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals) { $0.maximumIncoming = 1 }
            defer { listener.close() }
            let (occupant, _) = try Self.admittedFakeSource(port: listener.port)
            let (machine, console) = try F.dirtySource()
            defer { machine.stop(); machine.waitForExit() }
            Self.expectRefusal("--max-incoming 1") {
                _ = try M.sender(machine).migrate(to: "127.0.0.1", port: listener.port, tls: M.pki.src)
            }
            try F.expectSourceIntact(machine, console)
            #expect(arrivals.waitForFailure(containing: "refused: 1 migration is already arriving"), "\(arrivals.failures)")
            // The occupant leaves; its admission is released.
            occupant.stream.close()
            #expect(arrivals.waitForFailures(count: 2, timeout: 20))
            let (again, _) = try Self.admittedFakeSource(port: listener.port)
            again.stream.close()
        }

        @Test func memoryOverTheTotalIsRefusedAndTheVMStays() throws {
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals) { $0.maximumMemory = 384 << 20 }
            defer { listener.close() }
            // A peer declaring a 60 GiB VM is refused in answer to MACHINE, before anything is built.
            let (fake, _) = try Self.admittedFakeSource(port: listener.port)
            defer { fake.stream.close() }
            try fake.send(Self.describe(60 << 30))
            guard case let .error(big) = try fake.receive() else { Issue.record("no ERROR for a 60 GiB VM"); return }
            #expect(big.code == .resources && big.reason.contains("61440 MiB, more than this host accepts"), "\(big.reason)")

            // 256 MiB arrives and runs here; a second 256 MiB would make 512 > 384 in total.
            let (first, _) = try M.source("workload=idle")
            _ = try M.sender(first).migrate(to: "127.0.0.1", port: listener.port, tls: M.pki.src)
            #expect(arrivals.wait(count: 1))
            defer { arrivals.vms.forEach { $0.machine.stop(); $0.machine.waitForExit() } }
            let (second, console) = try M.source("workload=dirty mib=32 passes=0 pattern=random rate=20000 progress=0")
            defer { second.stop(); second.waitForExit() }
            #expect(console.wait(for: "workload dirty", timeout: 10))
            // Refused at MACHINE, while the source already sends pages: the source must report
            // the destination's reason, not "the peer closed the connection".
            Self.expectRefusal("256 MiB by VMs running here", "--max-memory") {
                _ = try M.sender(second).migrate(to: "127.0.0.1", port: listener.port, tls: M.pki.src)
            }
            try F.expectSourceIntact(second, console)
        }

        @Test func tricklingPeerIsDroppedAndFreed() throws {
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals) {
                $0.maximumIncoming = 1
                $0.progressTimeout = 2 // the per-read timeout stays 30 s
            }
            defer { listener.close() }
            let (c, _) = try Self.admittedFakeSource(port: listener.port)
            defer { c.stream.close() }
            try c.send(Self.describe(64 << 20))
            // One small batch now and then: well within every read timeout.
            let dropped = arrivals.waitForFailure(containing: "no progress", timeout: 30) {
                try c.send(.pages(flags: 0, payload: Self.oneZeroPage))
            }
            #expect(dropped, "the trickling peer was not dropped: \(arrivals.failures)")
            var report: ErrorReport?
            while let frame = try? c.receive() { if case let .error(r) = frame { report = r; break } }
            #expect(report?.code == .timeout && report?.reason.contains("no progress") == true, "\(String(describing: report))")
            // Freed: the single admission slot is free again.
            let (next, _) = try Self.admittedFakeSource(port: listener.port)
            next.stream.close()
        }

        @Test func malformedBatchesAreProtocolViolations() throws {
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals) { _ in }
            defer { listener.close() }
            let junk = [UInt8](repeating: 0x5a, count: 64)
            for (flags, payload) in [(UInt16(1), junk), (0, Array(Self.oneZeroPage.prefix(20)))] {
                let (c, _) = try Self.admittedFakeSource(port: listener.port)
                defer { c.stream.close() }
                try c.send(Self.describe(64 << 20))
                try c.send(.pages(flags: flags, payload: payload))
                guard case let .error(report) = try c.receive() else { Issue.record("no ERROR for a malformed batch"); continue }
                #expect(report.code == .protocolViolation, "code \(report.code) for \(report.reason)")
            }
        }

        /// The control stream fails first and the data stream is closed after it: the log names
        /// the control stream's error, not the follow-on close.
        @Test func listenerLogsTheOriginalErrorNotItsOwnClose() throws {
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals) { _ in }
            defer { listener.close() }
            let (c, id) = try Self.admittedFakeSource(port: listener.port, streams: 2)
            defer { c.stream.close() }
            try c.send(Self.describe(64 << 20))
            let data = FrameChannel(try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: M.pki.src))
            defer { data.stream.close() }
            try data.send(.join(migrationID: id, streamIndex: 1))
            try c.send(.pages(flags: 0, payload: Array(Self.oneZeroPage.prefix(20))))
            #expect(arrivals.waitForFailures(count: 1, timeout: 20))
            let logged = arrivals.condition.withLock { arrivals.failures.joined(separator: "\n") }
            #expect(logged.contains("page batch") || logged.contains("malformed"), "\(logged)")
            #expect(!logged.contains("closed on this host"), "\(logged)")
        }

        @Test func senderReportsTheDestinationsReasonDuringRounds() throws {
            let fake = try F.fakeReceiver { c in
                try F.handshake(c)
                for _ in 0..<3 { _ = try c.receive() }
                c.sendError(.resources, "the fake destination ran out of room")
            }
            defer { fake.close() }
            let (machine, console) = try F.dirtySource()
            defer { machine.stop(); machine.waitForExit() }
            do {
                _ = try M.sender(machine) { $0.streams = 1 }.migrate(to: "127.0.0.1", port: fake.port, tls: M.pki.src)
                Issue.record("migrated to a destination that gave up")
            } catch {
                #expect(error.description.contains("the fake destination ran out of room"), "\(error)")
            }
            try F.expectSourceIntact(machine, console)
        }
    }
}

extension EndToEnd.MigrationTests {
    /// A real idle VM migrates to `port` and arrives; then it is stopped.
    static func expectArrival(at port: UInt16, _ arrivals: Arrivals) throws {
        let (machine, _) = try source("workload=idle")
        _ = try sender(machine).migrate(to: "127.0.0.1", port: port, tls: pki.src)
        #expect(arrivals.wait(count: 1), "the VM did not arrive: \(arrivals.failures)")
        arrivals.vms.forEach { $0.machine.stop(); $0.machine.waitForExit() }
    }
}

extension EndToEnd.MigrationTests.Arrivals {
    /// Waits until a logged failure contains `text`; calls `trickle` about every 0.3 s
    /// meanwhile (a peer's slow behaviour, when the test plays one).
    func waitForFailure(containing text: String, timeout: Double = 20,
                        trickle: (() throws -> Void)? = nil) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while !failures.contains(where: { $0.contains(text) }) {
                let step = trickle == nil ? deadline : min(deadline, Date(timeIntervalSinceNow: 0.3))
                if !condition.wait(until: step), Date() >= deadline { return failures.contains { $0.contains(text) } }
                if let trickle {
                    condition.unlock()
                    try? trickle()
                    condition.lock()
                }
            }
            return true
        }
    }
}

extension EndToEnd {
    /// The listener's limits through the real `pvmigrate` binary: the flags reach the engine, the
    /// refusal is logged at the destination, and `send` prints the destination's reason while the
    /// VM keeps running at the source.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct ListenLimitsCLITests {
        @Test func sendOverTheListenersMemoryLimitIsRefusedAndTheVMStays() throws {
            let hosts = try ListenSendTests.Hosts()
            try hosts.certs("pki", hosts: ["src", "dst=127.0.0.1"])
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst", ["--max-memory", "64M", "--max-incoming", "2"])
            #expect(listener.wait(for: "limits: 2 migrations at once, 64 MiB"), "listen did not start: \(listener.text)")
            try hosts.startVM("vm") // 128 MiB
            let sent = try hosts.send("vm", port: port, tlsDir: "pki/src")
            #expect(sent.status != 0, "a 128 MiB VM was sent to a listener with --max-memory 64M: \(sent.text)")
            #expect(sent.stderr.contains("the destination refused: the VM has 128 MiB, more than this host accepts"),
                    "\(sent.text)")
            #expect(listener.wait(for: "refused: the VM has 128 MiB"), "no refusal in the listener's log: \(listener.text)")
            let status = try #require(try hosts.status("src", "vm"), "the VM is gone from the source")
            #expect(status["state"]?.string == "running", "\(status)")
            #expect(try hosts.psNames("dst").isEmpty)
        }
    }
}
