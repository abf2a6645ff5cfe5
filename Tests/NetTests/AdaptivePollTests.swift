@testable import Net
import Testing

/// The adaptive busy-poll window of a NET_SLEEP wait (`AdaptivePoll`, KVM halt-polling's rules):
/// it grows only while frames arrive soon enough for a longer poll to catch them, and a quiet
/// NIC brings it back to 0, so an idle VM spends no core.
@Suite struct AdaptivePollTests {
    let ms: UInt64 = 1_000_000, us: UInt64 = 1_000

    @Test func aLimitOfZeroNeverPolls() {
        var p = AdaptivePoll(limitNanoseconds: 0)
        for outcome in [AdaptivePoll.Outcome.frame(afterNanoseconds: 1), .frame(afterNanoseconds: 5 * ms), .timedOut, .interrupted] {
            p.record(outcome)
            #expect(p.window == 0, "after \(outcome)")
        }
    }

    @Test func framesWithinTheLimitDoubleTheWindowFromTheStartUpToTheLimit() {
        var p = AdaptivePoll(limitNanoseconds: 2_500 * us)
        var windows: [UInt64] = []
        for _ in 0..<10 {
            p.record(.frame(afterNanoseconds: 1_930 * us)) // ping -i 0.002: the next request ~1.93 ms into the sleep
            windows.append(p.window / us)
        }
        #expect(windows == [10, 20, 40, 80, 160, 320, 640, 1_280, 2_500, 2_500])
        // A frame the window caught leaves it alone, however early.
        p.record(.frame(afterNanoseconds: 3 * us))
        #expect(p.window == 2_500 * us)
    }

    @Test func aWindowThatCatchesTheFramesStopsGrowing() {
        var p = AdaptivePoll(limitNanoseconds: 2_500 * us)
        for _ in 0..<20 { p.record(.frame(afterNanoseconds: 300 * us)) } // UDP at 2,000/s
        #expect(p.window == 320 * us, "the first window ≥ 300 µs, not the limit")
    }

    @Test func lateFramesAndTimeoutsHalveItToZeroAndInterruptsChangeNothing() {
        var p = AdaptivePoll(limitNanoseconds: 2_500 * us)
        for _ in 0..<9 { p.record(.frame(afterNanoseconds: 2 * ms)) }
        #expect(p.window == 2_500 * us)
        p.record(.interrupted) // a pause or a request: no news about the traffic
        #expect(p.window == 2_500 * us)
        p.record(.frame(afterNanoseconds: 40 * ms)) // later than the limit: polling was wasted
        #expect(p.window == 1_250 * us)
        var spent: UInt64 = 0, sleeps = 0
        while p.window > 0, sleeps < 100 { // the NIC falls quiet: each wait polls, then times out
            spent += p.window
            p.record(.timedOut)
            sleeps += 1
        }
        #expect(p.window == 0 && sleeps == 7, "\(sleeps) quiet sleeps to stop polling, window \(p.window) ns")
        #expect(spent < 2_500 * us, "a quiet NIC cost \(spent) ns of polling in all")
        p.record(.timedOut)
        #expect(p.window == 0)
    }
}

extension AdaptivePollTests {
    @Test func aSteadyFlowSleepsUntilShortlyBeforeItsNextFrame() {
        var p = AdaptivePoll(limitNanoseconds: 2_500 * us)
        #expect(p.sleepFirst == 0, "nothing known: no sleep before polling")
        for _ in 0..<3 { p.record(.frame(afterNanoseconds: 1_930 * us)) }
        #expect(p.window == 40 * us && p.sleepFirst == 0, "fewer than \(AdaptivePoll.history) frames known")
        for _ in 0..<6 { p.record(.frame(afterNanoseconds: 1_930 * us)) }
        #expect(p.window == 2_500 * us)
        #expect(p.sleepFirst == 1_930 * us - AdaptivePoll.wakeMargin, "it polls from the margin before the frame")
        // One early frame (it ended the sleep) brings the next sleep forward, to the soonest of the last four.
        p.record(.frame(afterNanoseconds: 1_000 * us))
        #expect(p.sleepFirst == 1_000 * us - AdaptivePoll.wakeMargin)
        for _ in 0..<AdaptivePoll.history { p.record(.frame(afterNanoseconds: 1_930 * us)) }
        #expect(p.sleepFirst == 1_930 * us - AdaptivePoll.wakeMargin, "the early one is forgotten after \(AdaptivePoll.history) more")
        // Frames sooner than the margin: no sleep first; and never a sleep without a window.
        for _ in 0..<AdaptivePoll.history { p.record(.frame(afterNanoseconds: 100 * us)) }
        #expect(p.sleepFirst == 0)
        var quiet = AdaptivePoll(limitNanoseconds: 0)
        for _ in 0..<8 { quiet.record(.frame(afterNanoseconds: 1_930 * us)) }
        #expect(quiet.window == 0 && quiet.sleepFirst == 0)
    }
}
