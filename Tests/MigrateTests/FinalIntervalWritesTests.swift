import Testing
import TestSupport

@testable import Migrate

/// A guest that writes `rate` random pages per second over a working set, paced as the
/// guest's `Pacer` paces it: when the host starves it, the writes it owes are made as soon as
/// it runs again (within its slack), so starvation moves writes rather than losing them.
private struct PacedWriter {
    let rate: Double
    let workingSet: Int
    var random: SeededGenerator
    /// Writes made so far (one page each).
    var written = 0

    init(rate: Double, workingSet: Int, seed: UInt64) {
        self.rate = rate; self.workingSet = workingSet; random = SeededGenerator(seed: seed)
    }

    /// The pages written in the interval ending at `end` (seconds since the start), given
    /// that the writer was starved from `starvedFrom` to `end` (nil: ran throughout).
    mutating func write(until end: Double, starvedFrom: Double? = nil) -> Set<Int> {
        let due = Int(rate * (starvedFrom ?? end))
        var pages = Set<Int>()
        while written < due {
            pages.insert(Int.random(in: 0..<workingSet, using: &random))
            written += 1
        }
        return pages
    }
}

@Suite("final interval writes")
struct FinalIntervalWritesTests {
    @Test("the rate is pooled over the recent intervals: a starved interval and its catch-up average out")
    func starvedIntervalAndCatchUpAverageOut() {
        var w = FinalIntervalWrites()
        w.record(pages: 0, seconds: 0.002) // starved throughout
        w.record(pages: 64, seconds: 0.002) // caught up: twice its share
        #expect(w.rate == 16_000)
        #expect(w.pages(over: 0.003, dirty: 10, pageCount: 1_000) == 48)
    }

    @Test("long intervals are not recorded: a guest rewriting its working set saturates them")
    func longIntervalsAreNotRecorded() {
        var w = FinalIntervalWrites()
        w.record(pages: 16_511, seconds: 13.36) // round 0 of resident-4g: 1.2k pages/s of a 16k/s writer
        #expect(w.intervals.isEmpty)
        #expect(w.rate == 0)
        #expect(w.pages(over: 0.005, dirty: 100, pageCount: 1 << 20) == 0)
        w.record(pages: 2_703, seconds: 0.17)
        #expect(abs(w.rate - 2_703 / 0.17) < 1e-6)
    }

    @Test("only the recent intervals count, invalid figures are ignored, and the estimate never exceeds the pages left")
    func windowInvalidFiguresAndBound() {
        var w = FinalIntervalWrites()
        for _ in 0..<FinalIntervalWrites.window { w.record(pages: 1_000, seconds: 0.01) } // 100k pages/s
        for _ in 0..<FinalIntervalWrites.window { w.record(pages: 10, seconds: 0.01) } // now 1k pages/s
        #expect(w.intervals.count == FinalIntervalWrites.window)
        #expect(abs(w.rate - 1_000) < 1e-9)
        w.record(pages: -1, seconds: 0.01)
        w.record(pages: 10, seconds: 0)
        w.record(pages: 10, seconds: .nan)
        w.record(pages: 10, seconds: .infinity)
        #expect(w.intervals.count == FinalIntervalWrites.window)
        #expect(abs(w.rate - 1_000) < 1e-9)
        #expect(w.pages(over: 1, dirty: 990, pageCount: 1_000) == 10)
        #expect(w.pages(over: 1, dirty: 2_000, pageCount: 1_000) == 0)
        #expect(w.pages(over: -1, dirty: 0, pageCount: 1_000) == 0)
        #expect(w.pages(over: .nan, dirty: 0, pageCount: 1_000) == 0)
    }

    @Test("the predicted final set matches a modelled paced guest within 30 %, where the last harvest's set alone falls short")
    func matchesAModelledPacedGuest() {
        // The resident bench load: 16,384 random page writes/s over 64 MiB. Rounds of a few
        // milliseconds, each followed by a harvest; the guest is starved for the first half of
        // every other round (2 cores, the sender's threads busy) and catches up after it. The
        // final interval — from the last harvest to the stopped vCPUs — is 2 ms plus a 0.5 ms stop.
        var predictedTotal = 0.0, actualTotal = 0.0, lastHarvestTotal = 0.0
        for seed in UInt64(1)...40 {
            var guest = PacedWriter(rate: 16_384, workingSet: 16_384, seed: seed)
            var p = DowntimePredictor()
            p.setStopLatencies([0.0005])
            var now = 0.0, last = Set<Int>()
            for (i, round) in [0.020, 0.008, 0.006, 0.004, 0.003, 0.002].enumerated() {
                let end = now + round
                last = guest.write(until: end, starvedFrom: i % 2 == 0 ? now + round / 2 : nil)
                p.recordInterval(pages: last.count, seconds: round)
                now = end
            }
            let sinceHarvest = 0.002
            let predicted = p.finalPages(dirty: last.count, sinceHarvest: sinceHarvest, pageCount: 16_384)
            // The paused harvest: what the guest wrote until the stop, merged with the last set.
            let actual = last.union(guest.write(until: now + sinceHarvest + 0.0005)).count
            predictedTotal += Double(predicted); actualTotal += Double(actual); lastHarvestTotal += Double(last.count)
            #expect(abs(Double(predicted) - Double(actual)) / Double(actual) <= 0.30,
                    "seed \(seed): predicted \(predicted) pages, the model's final set \(actual)")
        }
        #expect(abs(predictedTotal - actualTotal) / actualTotal < 0.10)
        // Without the term, the prediction is the last harvest's set: short by the final interval's writes.
        #expect(lastHarvestTotal / actualTotal < 0.7)
    }

    @Test("the predictor's final set is the last harvest's plus the guest's rate over the time since it and the stop")
    func predictorAddsTheFinalInterval() {
        var p = DowntimePredictor()
        #expect(p.finalPages(dirty: 100, sinceHarvest: 0.002, pageCount: 1 << 20) == 100) // no rate yet
        p.recordInterval(pages: 160, seconds: 0.01) // 16k pages/s
        p.setStopLatencies([0.0005])
        #expect(p.finalPages(dirty: 100, sinceHarvest: 0.001, pageCount: 1 << 20) == 124)
        #expect(p.finalPages(dirty: 100, sinceHarvest: -1, pageCount: 1 << 20) == 108) // only the stop
        #expect(p.finalPages(dirty: 100, sinceHarvest: 0.001, pageCount: 110) == 110)
        // The prediction grows with the pages: the pause for 124 pages, not 100 (both above the
        // small round the final round is anchored on).
        p.record(pages: 1_000, seconds: 0.012)
        p.record(pages: 60, seconds: 0.0009)
        #expect(p.predict(pages: 124).seconds > p.predict(pages: 100).seconds)
    }
}
