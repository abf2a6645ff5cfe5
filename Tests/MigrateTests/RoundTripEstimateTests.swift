import Testing

@testable import Migrate

@Suite("commit round-trip estimate")
struct RoundTripEstimateTests {
    @Test("the median of the recent samples: one inflated sample (HELLO, a PONG behind a round) does not move it, and old samples age out")
    func medianOfRecent() {
        var e = RoundTripEstimate(0.030) // HELLO → HELLO_ACK caught the destination busy
        #expect(e.seconds == 0.030)
        e.record(0.004)
        #expect(e.seconds == 0.004, "lower median of two: \(e.seconds)")
        // One sample that queued behind a round's pages or a preemption does not raise it.
        e.record(0.040); e.record(0.005)
        #expect(e.seconds == 0.005, "median of 30, 4, 40, 5 ms: \(e.seconds)")
        // A lone fast sample does not lower it either: the median is the typical round trip.
        e.record(0.0005)
        #expect(e.seconds == 0.005, "median of 30, 4, 40, 5, 0.5 ms: \(e.seconds)")
        // The window forgets old samples: the host got slower and stays slow.
        for _ in 0..<RoundTripEstimate.window { e.record(0.012) }
        #expect(e.seconds == 0.012)
        #expect(e.samples.count == RoundTripEstimate.window)
    }

    @Test("nonsense samples are ignored; no sample is 0")
    func invalidSamples() {
        var e = RoundTripEstimate()
        #expect(e.seconds == 0)
        e.record(-1); e.record(.nan); e.record(.infinity)
        #expect(e.samples.isEmpty)
        e.record(0.001)
        #expect(e.seconds == 0.001)
    }

    /// A model of the failing case (`twoMigrationsIntoOneListenerAtOnceBothSucceed` at load 9–17):
    /// an idle guest leaves a handful of pages per round; the HELLO round trip was taken while
    /// the listener handshook the other migration (30 ms), the control stream's real round trip
    /// under load is 2–6 ms with an occasional 35 ms. With one sample the fixed part (two round
    /// trips) alone overran the 50 ms target for every round; with the recent median it fits once
    /// the inflated samples are outvoted.
    @Test("an idle guest under load converges: the prediction fits once a few pings are in")
    func idleGuestConverges() throws {
        let target = 0.050
        var predictor = DowntimePredictor()
        predictor.harvest = 0.001
        for _ in 0..<4 { predictor.record(pages: 5, seconds: 0.002) }
        var e = RoundTripEstimate(0.030)
        predictor.roundTrip = e.seconds
        #expect(predictor.predict(pages: 5).seconds > target, "one inflated sample: \(predictor.predict(pages: 5).seconds)")
        let pings = [0.004, 0.035, 0.003, 0.006, 0.002, 0.005]
        var fittedAfter: Int?
        for (i, ping) in pings.enumerated() {
            e.record(ping)
            predictor.roundTrip = e.seconds
            if predictor.predict(pages: 5).seconds <= target { fittedAfter = i + 1; break }
        }
        let after = try #require(fittedAfter, "never fitted: round trip \(e.seconds)")
        #expect(after <= 3, "fits after \(after) pings (round trip \(e.seconds))")
    }
}
