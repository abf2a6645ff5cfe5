/// When stop-and-copy starts once the predicted pause fits the target (docs/architecture.md,
/// "One migration", step 4): not at the first round that fits, but at the dirty set's floor.
///
/// The first round whose predicted pause fits lands anywhere below the target — where the
/// shrinking sequence of rounds happens to cross it — so the final round's pages were luck:
/// 5 ms of pages at one guest size, 27 ms at another, for the same dirtying load
/// (docs/benchmarks.md, "The same cases on a quiet machine"). Pre-copy therefore goes on with
/// short rounds while each still shrinks the dirty set meaningfully, and stops when it no
/// longer does: a round of `p` pages lasts `overhead + p × cost`, the guest dirties `rate ×`
/// that meanwhile, so the sets shrink geometrically towards `rate × overhead / (1 − rate ×
/// cost)` — the floor the dirty rate allows, whatever the guest's resident size.
///
/// On a loaded host the rounds' times are noisy, so the set can bounce back up (71 → 154 pages
/// measured at load 12): a round that does not shrink the set ends pre-copy only when its
/// set is within `rebound` of the smallest seen since the first fit — at the floor; above
/// that, another round is tried (within the budget).
///
/// The pause's fixed part (the vCPU stop, the state save, the commit's round trips) is
/// measured only after small rounds (≤ 1 MiB on the wire: the sender then parks the vCPUs for a
/// moment and PINGs). A set can reach the floor straight from a big round — since KVM's log
/// vouches for the guest's always-dirty ranges (protocol.md §3.5.1) the floor is a handful of
/// pages — and the prediction the pause starts on would then rest on defaults (1 ms of state
/// save, the connection's first round trip) or on one sample: small rounds measure them first,
/// until `fixedPartSamples` stops have. One sample was not enough: a single stop, PING or
/// destination rehearsal caught preempted put 3–4 ms into a prediction of ~1 ms (docs/benchmarks.md,
/// "The pause rehearsed in its own conditions").
///
/// Bounded: at most `maximumRounds` more rounds and `budgetSeconds` more time after the first
/// fit, and never a round that could run past `--max-time` (then the set that fits is sent:
/// it fits, so giving up would be wrong). Pure: the tests drive it with a model of rounds.
struct FloorPolicy: Sendable, Equatable {
    enum Decision: Equatable { case stopAndCopy, anotherRound }

    /// Another round only when the last one left at most this share of the pages it sent.
    static let shrink = 0.8
    /// A set that did not shrink is at the floor when within this factor of the smallest seen.
    static let rebound = 1.25
    /// A set this small is at the floor: sending it is a fraction of a millisecond.
    static let floorPages = 32
    /// A set this small makes a round small enough to measure the fixed part in: 240 pages are
    /// at most ~0.99 MB on the wire even raw (4 KiB + a 16-byte entry each, PageBatch), under
    /// `RoundTripEstimate.quietRoundBytes`. It was 128: a floor of 162 pages then started the
    /// pause on one rehearsal, predicted 7.95 ms for 1.99 (docs/benchmarks.md, "The pause
    /// rehearsed in its own conditions").
    static let measurablePages = 240
    /// Stops (each with a state save and a PING) the fixed part's estimate rests on before the
    /// pause may start on it: the estimates take the median or the fastest of these.
    static let fixedPartSamples = 3
    /// Rounds after the first one that fitted.
    static let maximumRounds = 10
    /// Time after the first fit the extra rounds may take.
    static let budgetSeconds = 2.0

    /// Rounds run since the prediction first fitted.
    private(set) var extraRounds = 0
    /// When (seconds into the migration) the prediction first fitted.
    private(set) var firstFit: Double?
    /// The smallest dirty set seen since then.
    private(set) var smallest: Int?

    /// Called after a round whose predicted pause fits the target.
    /// - sent: the pages the round was given; dirty: the pages dirtied meanwhile (what the
    ///   next round, or the stop-and-copy, would send).
    /// - roundSeconds: how long the round took; elapsed: seconds since the migration began;
    ///   maxTime: `--max-time`; fixedPartSamples: the stops that have measured the pause's fixed part.
    mutating func decide(sent: Int, dirty: Int, roundSeconds: Double, elapsed: Double, maxTime: Double,
                         fixedPartSamples: Int = FloorPolicy.fixedPartSamples) -> Decision {
        if firstFit == nil { firstFit = elapsed }
        let smallestBefore = smallest
        smallest = min(smallest ?? dirty, dirty)
        let atFloor: Bool
        if dirty <= Self.floorPages {
            atFloor = true
        } else if Double(dirty) > Self.shrink * Double(sent) {
            // Not shrinking: at the floor, unless it bounced back above the smallest set seen.
            atFloor = !(smallestBefore.map { Double(dirty) > Self.rebound * Double($0) } ?? false)
        } else {
            atFloor = false
        }
        if atFloor, fixedPartSamples >= Self.fixedPartSamples || dirty > Self.measurablePages { return .stopAndCopy }
        guard extraRounds < Self.maximumRounds, elapsed - (firstFit ?? elapsed) < Self.budgetSeconds else { return .stopAndCopy }
        // The next round is shorter than this one (fewer pages); it must still end before --max-time.
        guard elapsed + max(0, roundSeconds) < maxTime else { return .stopAndCopy }
        extraRounds += 1
        return .anotherRound
    }
}
