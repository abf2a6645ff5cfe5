import Foundation
import Testing

@testable import Migrate

/// A model of pre-copy rounds: a round of `p` pages takes `overhead + p × perPage` seconds,
/// and meanwhile the guest dirties pages at random in a working set of `workingSet` pages at
/// `rate` pages per second (so a round of `t` seconds leaves `workingSet × (1 − e^(−rate·t/workingSet))`
/// dirty). The pause is predicted as `DowntimePredictor` does, from rounds of this model.
private struct RoundModel {
    var overhead = 0.002
    var perPage = 10e-6
    var rate = 16_384.0        // 64 MiB/s of 4 KiB pages, as bench's resident cases
    var workingSet = 16_384.0  // 64 MiB
    var fixed = 0.003
    var target = 0.050

    func seconds(_ pages: Int) -> Double { overhead + Double(pages) * perPage }
    func dirtied(during t: Double) -> Int { Int((workingSet * (1 - exp(-rate * t / workingSet))).rounded()) }
    func predicted(_ pages: Int) -> Double { seconds(pages) + fixed }
    /// The floor the rounds shrink towards: the fixed point of `p = dirtied(during: seconds(p))`.
    var floor: Int {
        var p = 0
        for _ in 0..<200 { p = dirtied(during: seconds(p)) }
        return p
    }

    /// Runs pre-copy from a round of `start` pages, as `MigrationSender.precopy` does after the
    /// verification sweep: stop at the first fit (no policy) or where `FloorPolicy` says.
    /// Returns the pages of the stop-and-copy round and the rounds run.
    func run(start: Int, policy: FloorPolicy?, maxTime: Double = 300, elapsedAtStart: Double = 1) -> (final: Int, rounds: Int) {
        var policy = policy, set = start, elapsed = elapsedAtStart, rounds = 0
        while rounds < 1_000 {
            let t = seconds(set)
            elapsed += t
            rounds += 1
            let next = dirtied(during: t)
            guard next == 0 || predicted(next) <= target else { set = next; continue }
            guard var p = policy else { return (next, rounds) }
            let decision = p.decide(sent: set, dirty: next, roundSeconds: t, elapsed: elapsed, maxTime: maxTime)
            policy = p
            if decision == .stopAndCopy { return (next, rounds) }
            set = next
        }
        return (set, rounds)
    }
}

@Suite("floor policy")
struct FloorPolicyTests {
    @Test("the final set lands at the floor whatever round first fitted, so the pause no longer depends on luck")
    func finalSetAtTheFloor() {
        let model = RoundModel()
        let floor = model.floor
        // Where the first fitting round lands depends on the guest's size (how long round 0 and
        // the sweep took) and on luck: from a set just under the target to one near the floor.
        var finals: [Int] = []
        for start in [4_500, 3_000, 1_500, 700, 300] {
            let firstFit = model.run(start: start, policy: nil).final
            let atFloor = model.run(start: start, policy: FloorPolicy()).final
            #expect(atFloor <= firstFit, "from \(start) pages: \(atFloor) pages at the floor vs \(firstFit) at the first fit")
            #expect(Double(atFloor) <= 1.5 * Double(floor),
                    "from \(start) pages: stop-and-copy of \(atFloor) pages, the model's floor is \(floor)")
            finals.append(atFloor)
        }
        let spread = Double(finals.max()!) / Double(max(1, finals.min()!))
        #expect(spread <= 1.5, "final sets \(finals): within 1.5× of each other")
        // Without the policy the same starts give final sets far apart (the luck it removes).
        let firstFits = [4_500, 300].map { model.run(start: $0, policy: nil).final }
        #expect(Double(firstFits[0]) > 2 * Double(firstFits[1]), "first-fit finals \(firstFits)")
    }

    @Test("a set already at the floor, or not shrinking, goes to stop-and-copy at once")
    func noGainNoRound() {
        var p = FloorPolicy()
        #expect(p.decide(sent: 5_000, dirty: FloorPolicy.floorPages, roundSeconds: 0.05, elapsed: 3, maxTime: 300) == .stopAndCopy)
        p = FloorPolicy()
        #expect(p.decide(sent: 1_000, dirty: 900, roundSeconds: 0.01, elapsed: 3, maxTime: 300) == .stopAndCopy,
                "900 of 1,000 pages dirtied again: another round would not shrink the set")
        p = FloorPolicy()
        #expect(p.decide(sent: 1_000, dirty: 700, roundSeconds: 0.01, elapsed: 3, maxTime: 300) == .anotherRound)
        #expect(p.extraRounds == 1)
        // An idle guest: a handful of pages, never an extra round.
        p = FloorPolicy()
        #expect(p.decide(sent: 40, dirty: 3, roundSeconds: 0.001, elapsed: 0.1, maxTime: 300) == .stopAndCopy)
        #expect(p.extraRounds == 0)
    }

    @Test("a floor reached straight from a big round gets small rounds until the pause's fixed part is measured three times")
    func unmeasuredFixedPartGetsSmallRounds() {
        // 735 pages sent (3 MB on the wire: no PING, no vCPU stop sampled), 2 dirtied meanwhile.
        var p = FloorPolicy()
        #expect(p.decide(sent: 735, dirty: 2, roundSeconds: 0.006, elapsed: 3, maxTime: 300, fixedPartSamples: 0) == .anotherRound)
        // Small rounds now, each measuring once; still at the floor, but one sample is not enough.
        #expect(p.decide(sent: 2, dirty: 3, roundSeconds: 0.001, elapsed: 3.01, maxTime: 300, fixedPartSamples: 1) == .anotherRound)
        #expect(p.decide(sent: 3, dirty: 2, roundSeconds: 0.001, elapsed: 3.02, maxTime: 300, fixedPartSamples: 2) == .anotherRound)
        #expect(p.decide(sent: 2, dirty: 3, roundSeconds: 0.001, elapsed: 3.03, maxTime: 300,
                         fixedPartSamples: FloorPolicy.fixedPartSamples) == .stopAndCopy)
        #expect(p.extraRounds == 3)
        // 162 pages (measured: it went on one rehearsal while the limit was 128): still small
        // enough for a quiet round, so it gets one.
        p = FloorPolicy()
        #expect(p.decide(sent: 128, dirty: 162, roundSeconds: 0.005, elapsed: 3, maxTime: 300, fixedPartSamples: 1) == .anotherRound)
        #expect(FloorPolicy.measurablePages * (4096 + 16) < Int(RoundTripEstimate.quietRoundBytes))
        // A set too big for a round to measure anything: at the floor, it goes as before.
        p = FloorPolicy()
        #expect(p.decide(sent: 1_000, dirty: 900, roundSeconds: 0.01, elapsed: 3, maxTime: 300, fixedPartSamples: 0) == .stopAndCopy)
        // Bounded like every extra round: not past the budget after the first fit, nor --max-time.
        p = FloorPolicy()
        _ = p.decide(sent: 10_000, dirty: 5_000, roundSeconds: 0.01, elapsed: 1, maxTime: 300)
        #expect(p.decide(sent: 5_000, dirty: 2, roundSeconds: 0.01, elapsed: 1 + FloorPolicy.budgetSeconds, maxTime: 300,
                         fixedPartSamples: 1) == .stopAndCopy)
        p = FloorPolicy()
        #expect(p.decide(sent: 40, dirty: 2, roundSeconds: 0.5, elapsed: 9.6, maxTime: 10, fixedPartSamples: 1) == .stopAndCopy)
    }

    @Test("a set that bounced back above the smallest seen gets another round; one near the smallest ends pre-copy")
    func rebound() {
        var p = FloorPolicy()
        #expect(p.decide(sent: 300, dirty: 150, roundSeconds: 0.01, elapsed: 3, maxTime: 300) == .anotherRound)
        #expect(p.decide(sent: 150, dirty: 71, roundSeconds: 0.007, elapsed: 3.01, maxTime: 300) == .anotherRound)
        // Measured at load 12: 71 pages sent, 154 dirtied meanwhile (a preempted round).
        #expect(p.decide(sent: 71, dirty: 154, roundSeconds: 0.006, elapsed: 3.02, maxTime: 300) == .anotherRound,
                "154 pages is over 1.25 × the 71 seen: not the floor")
        #expect(p.decide(sent: 154, dirty: 80, roundSeconds: 0.006, elapsed: 3.03, maxTime: 300) == .anotherRound)
        #expect(p.decide(sent: 80, dirty: 85, roundSeconds: 0.005, elapsed: 3.04, maxTime: 300) == .stopAndCopy,
                "85 pages: within 1.25 × the smallest (71), and no longer shrinking")
        #expect(p.smallest == 71)
    }

    @Test("extra rounds are bounded: by count, by time after the first fit, and by --max-time")
    func bounded() {
        var p = FloorPolicy()
        var decisions: [FloorPolicy.Decision] = []
        for i in 0..<(FloorPolicy.maximumRounds + 3) {
            decisions.append(p.decide(sent: 10_000, dirty: 5_000, roundSeconds: 0.001, elapsed: 1 + Double(i) * 0.001, maxTime: 300))
        }
        #expect(decisions.filter { $0 == .anotherRound }.count == FloorPolicy.maximumRounds, "\(decisions)")
        #expect(decisions.last == .stopAndCopy)

        p = FloorPolicy()
        #expect(p.decide(sent: 10_000, dirty: 5_000, roundSeconds: 0.5, elapsed: 1, maxTime: 300) == .anotherRound)
        #expect(p.decide(sent: 10_000, dirty: 5_000, roundSeconds: 0.5, elapsed: 1 + FloorPolicy.budgetSeconds, maxTime: 300) == .stopAndCopy,
                "the time budget after the first fit is spent")

        p = FloorPolicy()
        #expect(p.decide(sent: 10_000, dirty: 5_000, roundSeconds: 0.5, elapsed: 9.7, maxTime: 10) == .stopAndCopy,
                "another round could end past --max-time: the set that fits goes now")
    }

    @Test("in the model, the extra rounds cost little time: they shrink geometrically")
    func extraTimeIsSmall() {
        let model = RoundModel()
        let first = model.run(start: 4_500, policy: nil)
        let floor = model.run(start: 4_500, policy: FloorPolicy())
        #expect(floor.rounds > first.rounds)
        #expect(floor.rounds - first.rounds <= FloorPolicy.maximumRounds)
    }
}
