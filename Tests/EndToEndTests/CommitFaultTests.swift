import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// The commit protocol under faults (protocol.md §3.6, docs/commit-protocol-tests.md): a real
    /// KVM guest migrates through a `FaultProxy` that drops, cuts around, corrupts or delays one
    /// frame; afterwards the VM runs in exactly one place — at the source (resumed) or at the
    /// destination (and stopped at the source) — and its own self-check is clean there. Where the
    /// source cannot know the outcome it first reports `.unresolved` with the VM paused, then
    /// asks the destination (RESOLVE, through the same proxy).
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct CommitFaultTests {
        typealias M = MigrationTests
        typealias P = FaultProxy

        enum Place: Sendable {
            case source, destination
            /// Either, as the destination decided: GO is on the wire when the connection is
            /// cut, and whether the destination reads it before the source's RESOLVE arrives
            /// is timing (a busy machine). Both ends must agree: started → destination only;
            /// aborted or unknown → source only.
            case asDecided
        }

        struct Case: Sendable, CustomTestStringConvertible {
            var name: String
            var rules: [P.Rule]
            /// Where the VM must run in the end.
            var place: Place
            /// Whether the source must first report `.unresolved` (GO may have been delivered).
            var unresolved: Bool
            /// Text the source's error must contain (when it is not unresolved).
            var error: String? = nil
            var tls = false
            /// Streams the source asks for (2: a data stream, connection 1 of the proxy).
            var streams = 1
            /// The fault cannot harm the migration (e.g. a data stream cut after its STREAM_END,
            /// past which nothing is read): it must complete, the VM at the destination.
            var succeeds = false
            /// The destination may also report a connection of the case that came and went on
            /// its own (a late JOIN, a RESOLVE the proxy lost): one failure or more.
            var moreFailures = false
            var testDescription: String { name }
        }

        /// Every frame before the commit × drop / cut before / cut after / flip a bit that must be
        /// detected (a reserved bit, a version, a count, a digest): each fails before GO, so the
        /// source resumes by itself. (Even a dropped ROUND, though informational, is caught: the
        /// stream's STREAM_END counts its frames.)
        static let matrix: [Case] = {
            let frames: [(name: String, type: UInt16, direction: P.Direction, bit: Int)] = [
                ("HELLO", 1, .toDestination, 0),          // min_version 2 → 3 > max_version
                ("HELLO_ACK", 2, .toSource, 16),          // the reserved u16
                ("MACHINE", 3, .toDestination, 8 * 12 + 1), // a reserved flags bit
                ("ROUND", 6, .toDestination, 32),         // the reserved u32
                ("STREAM_END", 11, .toDestination, 0),    // the frame count
                ("STATE", 7, .toDestination, 8 * 64),     // covered by the STATE digest
                ("COMMIT", 8, .toDestination, 8 * 16),    // the STATE digest itself
            ]
            var cases: [Case] = []
            for f in frames {
                for (label, fault) in [("dropped", P.Fault.drop), ("cut before", .cutBefore), ("cut after", .cutAfter),
                                       ("bit \(f.bit) flipped", .flipBit(f.bit))] {
                    cases.append(Case(name: "\(f.direction) \(f.name) \(label)", rules: [P.Rule(f.direction, frameType: f.type, fault)],
                                      place: .source, unresolved: false))
                }
            }
            return cases
        }()

        // Frame types, protocol.md §3.2.
        static let pages: UInt16 = 5, state: UInt16 = 7, commit: UInt16 = 8, prepared: UInt16 = 12, go: UInt16 = 13, done: UInt16 = 14
        /// Read timeouts on both sides and the destination's GO deadline (seconds). Short, because
        /// every drop and delay case waits one out (CI time), yet well above the longest silence of
        /// a healthy migration here (a ~1 s verification slice, protocol.md §3.5.2).
        static let timeout = 2.0
        /// Past every timeout of the suite (reads, the first frame, GO): the delay cases.
        static let pastTimeout = timeout + 1.0
        /// Generous: the faults are the subject, not the pause. On a loaded 2-core machine the
        /// commit's fixed cost alone has exceeded the default 50 ms, and a source that cannot
        /// converge fails before the frame under test is ever sent.
        static let downtimeTarget = 0.5

        static let cases: [Case] = [
            Case(name: "lost DONE (the old lost COMMIT_ACK)", rules: [P.Rule(.toSource, frameType: done, .drop)],
                 place: .destination, unresolved: true),
            Case(name: "lost GO", rules: [P.Rule(.toDestination, frameType: go, .drop)], place: .source, unresolved: true),
            Case(name: "lost PREPARED", rules: [P.Rule(.toSource, frameType: prepared, .drop)], place: .source,
                 unresolved: false, error: "no data within the stream timeout"),
            Case(name: "cut right before PREPARED", rules: [P.Rule(.toSource, frameType: prepared, .cutBefore)], place: .source,
                 unresolved: false),
            Case(name: "cut right after PREPARED", rules: [P.Rule(.toSource, frameType: prepared, .cutAfter)], place: .source,
                 unresolved: true),
            Case(name: "cut right before GO", rules: [P.Rule(.toDestination, frameType: go, .cutBefore)], place: .source,
                 unresolved: true),
            Case(name: "cut right after GO", rules: [P.Rule(.toDestination, frameType: go, .cutAfter)], place: .asDecided,
                 unresolved: true),
            Case(name: "bit flipped in STATE", rules: [P.Rule(.toDestination, frameType: state, .flipBit(8 * 200 + 3))],
                 place: .source, unresolved: false, error: "state digest mismatch"),
            Case(name: "bit flipped in COMMIT's memory digest", rules: [P.Rule(.toDestination, frameType: commit, .flipBit(17))],
                 place: .source, unresolved: false, error: "memory digest mismatch"),
            Case(name: "bit flipped in GO", rules: [P.Rule(.toDestination, frameType: go, .flipBit(42))], place: .source,
                 unresolved: true),
            Case(name: "bit flipped in DONE", rules: [P.Rule(.toSource, frameType: done, .flipBit(42))], place: .destination,
                 unresolved: true),
            Case(name: "GO delayed past the destination's deadline", rules: [P.Rule(.toDestination, frameType: go, .delay(pastTimeout))],
                 place: .source, unresolved: true),
            Case(name: "DONE delayed past the source's timeout", rules: [P.Rule(.toSource, frameType: done, .delay(pastTimeout))],
                 place: .destination, unresolved: true),
            Case(name: "cut during rounds (3rd PAGES)", rules: [P.Rule(.toDestination, frameType: pages, occurrence: 3, .cutBefore)],
                 place: .source, unresolved: false),
            Case(name: "TLS: cut after 30 KB towards the destination", rules: [P.Rule(.toDestination, cutAfterBytes: 30_000)],
                 place: .source, unresolved: false, tls: true),
        ]

        static func listener(_ arrivals: M.Arrivals, tls: TLSMode, outcomes: String) throws -> MigrationListener {
            var options = ReceiverOptions()
            options.timeout = timeout
            options.goDeadline = timeout
            options.listener.handshakeTimeout = timeout // the deadline for the first frame (a delayed HELLO)
            options.outcomes = try OutcomeTable(path: outcomes)
            return try M.listener(arrivals, tls: tls, options: options)
        }

        /// Asks the destination until it answers (bounded): what `VMHost` does automatically.
        static func resolve(_ sender: MigrationSender, _ u: UnresolvedMigration) throws -> CommitOutcome {
            var outcome: CommitOutcome?
            var last: (any Error)?
            Wait.until {
                do { outcome = try sender.resolve(u) } catch { last = error }
                return outcome != nil
            }
            if let outcome { return outcome }
            throw last!
        }

        @Test(arguments: cases + matrix)
        func vmRunsInExactlyOnePlace(_ c: Case) throws { try Self.check(c) }

        /// Runs one case: the migration through the proxy, then where the VM runs, its
        /// self-check, and a clean migration to show the destination still serves.
        static func check(_ c: Case) throws {
            let outcomes = NSTemporaryDirectory() + "pvmigrate-faults-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            defer { unlink(outcomes) }
            let arrivals = M.Arrivals()
            let listener = try Self.listener(arrivals, tls: c.tls ? M.pki.dst : .insecure, outcomes: outcomes)
            defer { listener.close() }
            let proxy = try FaultProxy(upstream: listener.port, rules: c.rules)
            defer { proxy.close() }
            let (machine, console) = try M.source("workload=dirty mib=16 passes=0 pattern=random rate=20000 progress=0")
            defer { if machine.exit == nil { machine.stop(); machine.waitForExit() } }
            #expect(console.wait(for: "workload dirty"))
            let sender = M.sender(machine) {
                $0.streams = c.streams
                $0.timeout = Self.timeout
                $0.downtimeTarget = Self.downtimeTarget
            }
            var unresolved: UnresolvedMigration?
            var place = c.place
            var sourceError = "none"
            do {
                _ = try sender.migrate(to: "127.0.0.1", port: proxy.port, tls: c.tls ? M.pki.src : .insecure)
                if !c.succeeds { Issue.record("the migration succeeded although a fault was injected (fired: \(proxy.firedFaults))") }
            } catch let MigrationError.unresolved(u) {
                unresolved = u
            } catch {
                sourceError = "\(error)"
                #expect(!c.succeeds, "a fault the protocol tolerates failed the migration: \(error)")
                if let text = c.error { #expect(error.description.contains(text), "source error: \(error)") }
            }
            #expect((unresolved != nil) == c.unresolved,
                    "expected unresolved=\(c.unresolved); got \(unresolved.map { "\($0)" } ?? "a plain failure")")
            if let u = unresolved {
                // Paused here, not resumed: only the destination knows.
                #expect(machine.exit == nil && machine.vcpus.allSatisfy { $0.state == .paused },
                        "an unresolved VM must stay paused at the source")
                let outcome = try Self.resolve(sender, u)
                if c.place == .asDecided { place = outcome == .started ? .destination : .source }
                #expect(outcome == (place == .destination ? .started : .aborted) || (place == .source && outcome == .unknown),
                        "the destination answered \(outcome)")
            }
            #expect(place != .asDecided, "case \(c.name): only an unresolved migration is settled by the destination")
            switch place {
            case .asDecided:
                break
            case .source:
                #expect(arrivals.waitForFailures(count: 1), "the destination never gave up its half")
                let failures = arrivals.condition.withLock { arrivals.failures }
                #expect(failures.count == 1 || (c.moreFailures && failures.count > 1), "destination failures: \(failures)")
                #expect(arrivals.vms.isEmpty, "the VM also arrived at the destination: it runs twice")
                try MigrationFailureTests.expectSourceIntact(machine, console)
            case .destination:
                #expect(arrivals.wait(count: 1), "the VM did not arrive")
                Wait.until { machine.exit != nil }
                #expect(machine.exit == .stopped, "the source must let go once the destination started")
                let vm = try #require(arrivals.vms.first)
                defer { vm.machine.stop(); vm.machine.waitForExit() }
                #expect(M.progresses(vm.machine), "the guest does not run at the destination")
                let console2 = try #require(arrivals.condition.withLock { arrivals.consoles.values.first })
                let (pages, bad) = try M.selfcheck(vm.machine, console2)
                #expect(pages > 0 && bad == 0, "destination self-check: \(pages) pages, \(bad) bad")
            }
            // Checked once the destination has settled: a fault on a frame sent while the source
            // fails (its ERROR) fires after `migrate` returns.
            #expect(proxy.firedFaults.count == c.rules.count,
                    "faults that fired: \(proxy.firedFaults) of \(c.rules.count); the source's error: \(sourceError)")
            // The destination keeps serving: a clean migration (no proxy) still arrives.
            let before = arrivals.condition.withLock { arrivals.vms.count }
            let (next, _) = try M.source("workload=idle", memory: 64 << 20)
            _ = try M.sender(next) { $0.streams = 1; $0.downtimeTarget = Self.downtimeTarget }.migrate(to: "127.0.0.1", port: listener.port, tls: c.tls ? M.pki.src : .insecure)
            #expect(arrivals.wait(count: before + 1), "the destination no longer receives after the fault")
            #expect(next.waitForExit() == .stopped)
            arrivals.condition.withLock { arrivals.vms }.dropFirst(before).forEach { $0.machine.stop(); $0.machine.waitForExit() }
        }
    }

    /// Version 2 talks only to version 2 (protocol.md §3.6.6): a version 1 peer on either side
    /// is refused before anything is sent, and the VM stays where it is.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct CommitVersionTests {
        typealias M = MigrationTests

        @Test func aVersion1SourceIsRefusedByTheDestination() throws {
            let arrivals = M.Arrivals()
            let listener = try M.listener(arrivals)
            defer { listener.close() }
            let c = FrameChannel(try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: M.pki.src))
            defer { c.stream.close() }
            try c.send(.hello(Hello(minVersion: 1, maxVersion: 1, streams: 1, capabilities: [], migrationID: Array(repeating: 3, count: 16))))
            guard case let .error(report) = try c.receive() else { Issue.record("no ERROR for a version 1 HELLO"); return }
            #expect(report.code == .unsupportedVersion, "\(report)")
            #expect(report.reason.contains("only 2"), "\(report.reason)")
        }

        @Test func aVersion1DestinationIsRefusedAndTheVMKeepsRunning() throws {
            let fake = try MigrationFailureTests.fakeReceiver { c in
                guard case .hello = try c.receive() else { return }
                try c.send(.helloAck(HelloAck(version: 1, streams: 1, capabilities: [])))
                _ = try? c.receive()
            }
            defer { fake.close() }
            let (machine, console) = try MigrationFailureTests.dirtySource()
            defer { machine.stop(); machine.waitForExit() }
            do {
                _ = try M.sender(machine) { $0.streams = 1 }.migrate(to: "127.0.0.1", port: fake.port, tls: M.pki.src)
                Issue.record("migrated to a version 1 destination")
            } catch {
                #expect("\(error)".contains("version 1"), "\(error)")
            }
            try MigrationFailureTests.expectSourceIntact(machine, console)
        }
    }
}

