import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// The sender's connection set-up fails cleanly (issue 9): when the destination never
    /// answers HELLO, or a data stream cannot be opened, every stream the attempt opened is
    /// closed at once — the destination sees the control stream end while the sender (a VM
    /// host that lives on) still exists — and the VM keeps running here.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct SenderConnectTests {
        typealias M = MigrationTests
        typealias F = MigrationFailureTests

        enum Stall: String, CaseIterable, Sendable {
            /// HELLO is read and never answered.
            case noHelloAck = "no HELLO_ACK"
            /// HELLO_ACK grants 2 streams; the listening socket is closed by then, so the data
            /// stream's connect is refused after MACHINE.
            case dataStreamRefused = "a data stream refused"
        }

        @Test(arguments: Stall.allCases)
        func theControlStreamIsClosedOnEveryFailure(_ stall: Stall) throws {
            let ended = Locked<String?>(nil) // set when the fake's reads end
            let fake = try StreamListener(host: "127.0.0.1", port: 0, mode: M.pki.dst)
            let port = fake.port
            Thread.detachNewThread {
                guard let stream = try? fake.accept() else { return }
                fake.close() // no second connection: a data stream is refused
                let c = FrameChannel(stream)
                defer { stream.close() }
                stream.setTimeout(seconds: 90) // longer than the test waits: only a close ends the reads
                guard case .hello? = try? c.receive() else { ended.withLock { $0 = "no HELLO" }; return }
                if stall == .dataStreamRefused {
                    try? c.send(.helloAck(HelloAck(version: 2, streams: 2, capabilities: [.pvState])))
                }
                var frames: [String] = []
                while let frame = try? c.receive() { frames.append(frame.name) }
                ended.withLock { $0 = "closed after \(frames)" }
            }
            defer { fake.close() }
            let (machine, console) = try M.source("workload=dirty mib=8 passes=0 pattern=random rate=20000 progress=0")
            defer { machine.stop(); machine.waitForExit() }
            #expect(console.wait(for: "workload dirty"))
            let sender = M.sender(machine) {
                $0.streams = 2
                $0.timeout = 1
            }
            var failure = "none"
            do {
                _ = try sender.migrate(to: "127.0.0.1", port: port, tls: M.pki.src)
                Issue.record("migrated to a destination that stalls (\(stall.rawValue))")
            } catch {
                failure = "\(error)" // expected: the attempt fails; what matters is what it leaves open
            }
            // `sender` is still alive here: only an explicit close ends the fake's read.
            #expect(Wait.until(timeout: 30) { ended.value != nil },
                    "the control stream stayed open after the failed attempt (\(stall.rawValue))")
            // The sender says why before it closes (protocol.md §3.7): ERROR 7 (no HELLO_ACK in
            // time) or 8 (the data stream's connect was refused).
            let expected = stall == .noHelloAck ? "closed after [\"ERROR\"]" : "closed after [\"MACHINE\", \"ERROR\"]"
            #expect(ended.value == expected, "the fake's reads ended with \(ended.value ?? "nothing"); the sender failed with \(failure)")
            withExtendedLifetime(sender) {}
            try F.expectSourceIntact(machine, console)
        }
    }
}
