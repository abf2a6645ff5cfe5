/// The pages the guest is expected to dirty between the last pre-copy harvest and the pause,
/// which the paused harvest adds to the final set (issue 11, item 2: the prediction covers
/// the pause's real final set, not only the last harvest's).
///
/// The guest's write rate is the pages the recent harvests found per second of the intervals
/// they covered (from the previous harvest to this one), pooled over the window: Σ pages ÷
/// Σ seconds. Pooled, not the median of per-interval rates: on a host with no idle core the
/// guest is often starved during a round and catches up after it (a rate-limited writer
/// writes its backlog at once), so single intervals hold 0 or several times the mean; over a
/// few of them the sum is the rate. Only intervals up to `longestInterval` count: over a long
/// one a guest that rewrites a working set saturates it (round 0's 13 s interval found 16.5k
/// pages of a 16k-page working set, 1.2k pages/s from a guest writing 16k/s), and the final
/// interval is a few milliseconds. The final interval runs from the last harvest's end to
/// the moment the vCPUs are stopped: the time already passed when stop-and-copy is decided
/// plus the stop itself (`DowntimePredictor.stopVCPUs`).
///
/// What it cannot know: which of those pages are already in the last harvest's set (a guest
/// rewriting a small set adds nothing new; the estimate then errs high, the safe side for a
/// downtime target), and a backlog the guest has not caught up on yet when the interval
/// starts (it errs low then). `MigrationStats` keeps predicted and actual final pages, so
/// both show.
public struct FinalIntervalWrites: Sendable, Equatable {
    /// One harvest interval: the pages the harvest found and the seconds since the previous one.
    public struct Interval: Sendable, Equatable {
        public var pages: Int
        public var seconds: Double
    }

    /// Intervals the rate looks back on: recent ones describe the guest as it is now.
    public static let window = 6
    /// Intervals longer than this (seconds) say little about a few milliseconds: not recorded.
    public static let longestInterval = 0.5

    public private(set) var intervals: [Interval] = []

    public init() {}

    /// Records a harvest that found `pages` pages over the `seconds` since the previous harvest.
    /// Invalid figures (negative, not finite, an empty interval) and long intervals are ignored.
    public mutating func record(pages: Int, seconds: Double) {
        guard pages >= 0, seconds.isFinite, seconds > 0, seconds <= Self.longestInterval else { return }
        intervals.append(Interval(pages: pages, seconds: seconds))
        if intervals.count > Self.window { intervals.removeFirst(intervals.count - Self.window) }
    }

    /// Pages per second over the recent intervals (0 before any).
    public var rate: Double {
        let seconds = intervals.reduce(0.0) { $0 + $1.seconds }
        guard seconds > 0 else { return 0 }
        return Double(intervals.reduce(0) { $0 + $1.pages }) / seconds
    }

    /// The pages the guest is expected to add in the next `seconds`, for a final set that
    /// already holds `dirty` of the guest's `pageCount` pages (never more than the rest).
    public func pages(over seconds: Double, dirty: Int, pageCount: Int) -> Int {
        guard seconds.isFinite, seconds > 0 else { return 0 }
        let room = max(0, pageCount - max(0, dirty))
        return Int(min(Double(room), (rate * seconds).rounded()))
    }
}
