import Foundation

/// Predicts how long the stop-and-copy pause will last, from what the pre-copy rounds measured
/// on this link (issue 11, item 2). The source starts stop-and-copy only when the prediction
/// fits the downtime target, and `MigrationStats` records the prediction next to the actual
/// pause, so the model is checked against reality on every migration.
///
/// The model of the pause, phase by phase as `PausePhases` measures it:
///
///     pause = stopVCPUs + harvest                                (the pause begins)
///           + finalRound(final pages)                            (the final round)
///           + balloonUpdate + stateSave + stateBytes ÷ sendRate   (balloon map, state)
///           + 2 × roundTrip                                      (commit)
///     final pages = the last harvest's + the guest's rate × (time since it + stopVCPUs)
///
/// - `secondsPerPage` and `roundOverhead` come from a least-squares line through the recent
///   rounds' (pages, wall-clock seconds): the time a round really took on this link —
///   classification, encoding, compression, TLS and the socket — not bytes ÷ bandwidth. The
///   rounds ran with the guest running (competing for the cores), so on a loaded host the
///   fit is conservative for the paused final round.
/// - `finalRound(pages)`: the final round is small — tens of pages at the floor — and its time
///   is mostly the round's own overhead, which the line's intercept, weighted towards the
///   small rounds' noise, put 0.1 ms (median) under the paused round's (96 runs, docs/benchmarks.md
///   "The pause rehearsed in its own conditions"). So when the window holds small rounds
///   (at most `smallRoundPages`), the estimate is the cheapest of the last `anchorRounds` of
///   them — plus, for a final set bigger than that round, the extra pages at the line's
///   (paused) cost per page; else the line.
///   The fastest, not the median: the paused round has the cores the guest held.
/// - `pausedPageFactor`: the pre-copy rounds ran beside the running guest; the paused round
///   does not. On a host with no idle core during the rounds (/proc/stat), the cores are
///   shared by every busy thread, and the guest's share (its vCPU threads' CPU time ÷ the
///   rounds' time, `g` cores of `cores`) goes to the others once it is paused: the rounds'
///   cost per page is scaled by `1 − g / cores` (at least `minimumPausedPageFactor`). With
///   idle cores the guest did not hold the rounds back (they waited on the link) and the
///   factor is 1.
/// - final pages (`finalPages`): the paused harvest adds what the guest wrote after the last
///   pre-copy harvest; `FinalIntervalWrites` estimates it from the guest's recent rate. The
///   sender harvests as the last step before deciding (after the PING and the stop sample),
///   so that interval is short.
/// - `stopVCPUs`: parking the vCPUs, the median of measured pauses (`setStopLatencies`) — on
///   a busy host the scheduler's wake-up latency, not a constant. The sender parks the vCPUs
///   for a moment after each small pre-copy round (and PINGs meanwhile) and feeds the fastest
///   of the last 5 stops: one sample (the dirty tracker's start, once 1.9 s) had kept
///   stop-and-copy from ever starting (docs/benchmarks.md).
/// - `harvest`: the paused harvest, from the pre-copy harvests split by source: KVM's log
///   (the same ioctls over the same slots: the median of the harvests that read it) + the
///   bitmap work (the harvest minus its sources: the median) + the PV ring's drain (the
///   smallest PV part measured: with the guest running it also carries HARVEST_BARRIER,
///   which a paused harvest skips). Harvests recorded by total only (`recordHarvest(seconds:)`)
///   count as bitmap work. Re-arming KVM's log (KVM_CLEAR_DIRTY_LOG) is left out of each
///   sample: the paused harvest is the last and skips it. The median, not the last: one harvest slowed by a preemption
///   moved the fixed part 1.6 → 11.5 ms between two runs (docs/benchmarks.md, "Where the
///   pause goes").
/// - `roundTrip`: the control stream's round trip, `RoundTripEstimate`'s median of the HELLO →
///   HELLO_ACK exchange and a PING → PONG after each small pre-copy round, sent while the
///   vCPUs are parked (`stopSample`) as COMMIT and GO are: with the guest running it held a
///   core, and those round trips were 2–3× the commit's on a quiet host. The commit waits for
///   two acknowledgments: COMMIT → PREPARED and GO → DONE (protocol.md §3.6.3), each with
///   the destination's own work (digest check, state restore; the durable "started" record,
///   starting the vCPUs): `destinationPrepare` and `destinationStart`, the destination's own
///   estimate (`CommitWorkEstimate`, reported in PONG_WORK; 0 from a destination without
///   `COMMIT_WORK`, which then is under-predicted by that work as before).
/// - `stateSave`: saving, encoding and digesting the vCPU/device state — it grows with the
///   balloon map, 288 KiB at 9 GiB. The sender times it in the same stops as `stopVCPUs`
///   (`Machine.stateForTiming`, all of it but the NIC's few indices) and feeds the median of
///   the last 5 (`setStateSaves`); 1 ms until one is measured.
/// - `stateSend`: the STATE frame's bytes (`stateBytes`, the size of the state timed in
///   those stops) at the rate the pre-copy rounds moved bytes on the wire (`sendRate`,
///   the sender's bandwidth estimate; the rounds' wall time includes encoding, so the rate
///   errs low and the prediction high). With BALLOON_MAP the state is a few KiB; without,
///   the balloon map (288 KiB at 9 GiB) is most of it.
/// - `balloonUpdate`: the pause's BALLOON update (BALLOON_MAP, protocol.md §3.2.1):
///   comparing the map with what was sent and sending the difference — the same work the
///   sender does after each pre-copy round, timed there (`setBalloonUpdates`, the median of
///   the last 5). Finishing the streams is not modelled (0.0–0.3 ms measured, docs/benchmarks.md).
///
/// What the model leaves out: work done while paused that does not depend on the final
/// pages (the memory digest no longer is: protocol.md §3.5 keeps it as a running sum) —
/// that would show up as actual > predicted, and `MigrationStats` keeps both so it is seen.
public struct DowntimePredictor: Sendable, Equatable {
    /// One pre-copy round as measured: its pages and wall-clock time, and (when known) the
    /// CPU time the guest's vCPUs took meanwhile and the host's idle CPU time.
    public struct Sample: Sendable, Equatable {
        public var pages: Int
        public var seconds: Double
        public var guestCPU: Double?
        public var hostIdle: Double?
        public init(pages: Int, seconds: Double, guestCPU: Double? = nil, hostIdle: Double? = nil) {
            self.pages = pages; self.seconds = seconds; self.guestCPU = guestCPU; self.hostIdle = hostIdle
        }
    }

    /// One pre-copy harvest, split by source.
    public struct HarvestSample: Sendable, Equatable {
        public var total: Double
        /// KVM's dirty log (0: not read).
        public var kvm: Double
        /// The guest's PV ring (0: not read).
        public var pv: Double
        public init(total: Double, kvm: Double = 0, pv: Double = 0) { self.total = total; self.kvm = kvm; self.pv = pv }
        /// The rest: merging the sources' bitmaps, the balloon, the VMM's writes.
        var bitmapWork: Double { max(0, total - kvm - pv) }
    }

    /// A prediction, split into its two parts and phase by phase.
    public struct Prediction: Sendable, Equatable {
        /// Sending the final round's pages (including the per-round overhead).
        public var pagesSeconds: Double
        /// Stopping the vCPUs, harvest, state and commit round trips.
        public var fixedSeconds: Double
        /// The same pause in the phases `PausePhases` measures (`finalRound` = `pagesSeconds`;
        /// each commit round trip in `commitToPrepared` and `goToDone`).
        public var phases: PausePhases
        public var seconds: Double { pagesSeconds + fixedSeconds }
    }

    /// Rounds the fit looks back on: recent rounds describe the link and the load as they are now.
    public static let window = 6
    /// Cost per page assumed before any round sent a page: 4 KiB at 100 MB/s.
    public static let defaultSecondsPerPage = 4096 / 100e6
    /// Time to save and encode the machine state while paused, until one is measured.
    public static let defaultStateSave = 0.001
    /// Round trips on the control stream in the pause: COMMIT → PREPARED, GO → DONE.
    public static let commitRoundTrips = 2.0
    /// The paused round is never predicted faster than this share of the pre-copy rounds' cost.
    public static let minimumPausedPageFactor = 0.5
    /// Rounds of at most this many pages are small, like the final round (`finalRound`).
    public static let smallRoundPages = 256
    /// The recent small rounds the final round's estimate is anchored on.
    public static let anchorRounds = 3
    /// Host idle time (share of all cores over the rounds) above which the guest is taken not
    /// to have held the rounds back.
    public static let idleShare = 0.1

    public private(set) var samples: [Sample] = []
    public var roundTrip = 0.0
    /// The paused harvest's estimate (see the type's notes); `recordHarvest` updates it.
    public var harvest = 0.0
    public private(set) var harvestSamples: [HarvestSample] = []
    /// The recent harvests' total durations.
    public var harvests: [Double] { harvestSamples.map(\.total) }
    public var stateSave = DowntimePredictor.defaultStateSave
    /// The STATE payload's size in bytes, and the rate (bytes/s) the rounds moved on the
    /// wire; 0: not known, STATE's send is then not predicted.
    public var stateBytes = 0
    public var sendRate = 0.0
    /// The pause's BALLOON update (`setBalloonUpdates`); 0 without BALLOON_MAP.
    public var balloonUpdate = 0.0
    /// Parking the vCPUs at the start of the pause (`setStopLatencies`).
    public var stopVCPUs = 0.0
    /// The destination's own work from COMMIT read to PREPARED sent, and from GO read to DONE
    /// sent, as it reported it (PONG_WORK); 0 when it did not.
    public var destinationPrepare = 0.0
    public var destinationStart = 0.0
    /// The host's cores, for `pausedPageFactor`.
    public var cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// The guest's write rate over the recent harvest intervals (`recordInterval`), for the
    /// pages it adds between the last harvest and the pause (`finalPages`).
    public private(set) var writes = FinalIntervalWrites()

    public init() {}

    /// Records a finished pre-copy round. Rounds of zero pages say nothing about the cost
    /// per page but still bound the per-round overhead.
    public mutating func record(pages: Int, seconds: Double, guestCPU: Double? = nil, hostIdle: Double? = nil) {
        guard pages >= 0, seconds.isFinite, seconds >= 0 else { return }
        let valid = { (x: Double?) in x.flatMap { $0.isFinite && $0 >= 0 ? $0 : nil } }
        samples.append(Sample(pages: pages, seconds: seconds, guestCPU: valid(guestCPU), hostIdle: valid(hostIdle)))
        if samples.count > Self.window { samples.removeFirst(samples.count - Self.window) }
    }

    /// Records a round as the sender measured it (`RoundStats`).
    public mutating func record(_ r: RoundStats) {
        record(pages: r.pages, seconds: r.seconds, guestCPU: r.guestCPUSeconds, hostIdle: r.hostIdleSeconds)
    }

    /// Records a pre-copy harvest's duration, `kvm` and `pv` of it spent in those sources,
    /// and updates `harvest`.
    public mutating func recordHarvest(seconds: Double, kvm: Double = 0, pv: Double = 0) {
        guard [seconds, kvm, pv].allSatisfy({ $0.isFinite && $0 >= 0 }) else { return }
        harvestSamples.append(HarvestSample(total: seconds, kvm: kvm, pv: pv))
        if harvestSamples.count > Self.window { harvestSamples.removeFirst(harvestSamples.count - Self.window) }
        let kvmParts = harvestSamples.map(\.kvm).filter { $0 > 0 }, pvParts = harvestSamples.map(\.pv).filter { $0 > 0 }
        harvest = Self.median(kvmParts) + Self.median(harvestSamples.map(\.bitmapWork)) + (pvParts.min() ?? 0)
    }

    /// Records the harvest that ended round `r` (its `harvest…Seconds`).
    public mutating func recordHarvest(_ r: RoundStats) {
        guard let total = r.harvestSeconds else { return }
        // The paused harvest does not re-arm KVM's log (it is the last): not part of its model.
        let rearm = r.harvestKVMRearmSeconds ?? 0
        recordHarvest(seconds: total - rearm, kvm: max(0, (r.harvestKVMSeconds ?? 0) - rearm), pv: r.harvestPVSeconds ?? 0)
    }

    /// Records a pre-copy harvest that found `pages` pages over the `seconds` since the
    /// previous harvest (`FinalIntervalWrites`).
    public mutating func recordInterval(pages: Int, seconds: Double) {
        writes.record(pages: pages, seconds: seconds)
    }

    /// The final round's pages if stop-and-copy starts now: the last harvest's `dirty` pages
    /// and what the guest is expected to write in the `sinceHarvest` seconds already passed
    /// since that harvest and in stopping the vCPUs (`stopVCPUs`), at its recent rate; at
    /// most the guest's `pageCount` pages.
    public func finalPages(dirty: Int, sinceHarvest: Double, pageCount: Int) -> Int {
        max(0, dirty) + writes.pages(over: max(0, sinceHarvest) + stopVCPUs, dirty: dirty, pageCount: pageCount)
    }

    /// Sets `stopVCPUs` to the median of measured pauses (seconds to park every vCPU); none: unchanged.
    public mutating func setStopLatencies(_ latencies: [Double]) {
        let valid = latencies.filter { $0.isFinite && $0 >= 0 }
        if !valid.isEmpty { stopVCPUs = Self.median(valid) }
    }

    /// Sets `stateSave` to the median of measured state saves (seconds); none: unchanged.
    public mutating func setStateSaves(_ durations: [Double]) {
        let valid = durations.filter { $0.isFinite && $0 >= 0 }
        if !valid.isEmpty { stateSave = Self.median(valid) }
    }

    /// Sets `balloonUpdate` to the median of the pre-copy rounds' BALLOON updates (seconds).
    public mutating func setBalloonUpdates(_ durations: [Double]) {
        let valid = durations.filter { $0.isFinite && $0 >= 0 }
        if !valid.isEmpty { balloonUpdate = Self.median(valid) }
    }

    static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted(), middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    /// How much of the pre-copy rounds' cost per page the paused round is expected to take
    /// (see the type's notes): `1 − g / cores` when the host had no idle core, else 1.
    public var pausedPageFactor: Double {
        let measured = samples.filter { $0.seconds > 0 && $0.guestCPU != nil && $0.hostIdle != nil }
        guard !measured.isEmpty else { return 1 }
        let wall = measured.reduce(0) { $0 + $1.seconds }
        let guest = measured.reduce(0) { $0 + $1.guestCPU! }, idle = measured.reduce(0) { $0 + $1.hostIdle! }
        let capacity = wall * Double(cores)
        if idle > Self.idleShare * capacity { return 1 }
        return min(1, max(Self.minimumPausedPageFactor, 1 - guest / capacity))
    }

    /// The fitted line: seconds per page and seconds per round whatever its size. The fit
    /// minimises the relative error (weights 1/seconds²), so the small late rounds — the
    /// ones like the final round — decide the per-round overhead rather than being drowned
    /// by round 0.
    public var fit: (secondsPerPage: Double, roundOverhead: Double) {
        let measured = samples.filter { $0.seconds > 0 }
        let withPages = measured.filter { $0.pages > 0 }
        guard !withPages.isEmpty else {
            return (Self.defaultSecondsPerPage, samples.map(\.seconds).min() ?? 0)
        }
        var sw = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0
        for s in measured {
            let w = 1 / (s.seconds * s.seconds), x = Double(s.pages)
            sw += w; sx += w * x; sy += w * s.seconds; sxx += w * x * x; sxy += w * x * s.seconds
        }
        let determinant = sw * sxx - sx * sx
        let slope = determinant > 0 ? (sw * sxy - sx * sy) / determinant : 0
        let intercept = determinant > 0 ? (sy - slope * sx) / sw : -1
        if slope > 0, intercept >= 0 { return (slope, intercept) }
        // Noise (a host that got busier or quieter between rounds) gave an impossible line.
        let totalPages = withPages.reduce(0.0) { $0 + Double($1.pages) }
        let totalSeconds = withPages.reduce(0.0) { $0 + $1.seconds }
        if slope <= 0 || determinant <= 0 {
            // Big rounds no dearer than small ones: the rounds' floor, plus the average cost per page.
            return (totalSeconds / totalPages, measured.map(\.seconds).min() ?? 0)
        }
        // The overhead came out negative: the line through the origin (same weights).
        let ratioWeights = withPages.reduce(0.0) { $0 + Double($1.pages) * Double($1.pages) / ($1.seconds * $1.seconds) }
        let ratio = withPages.reduce(0.0) { $0 + Double($1.pages) / $1.seconds } / ratioWeights
        return (ratio, 0)
    }

    /// The final round of `pages` pages (see the type's notes): anchored on the cheapest of
    /// the recent small rounds when there are any, else the fitted line.
    public func finalRound(pages: Int) -> Double {
        let (perPage, overhead) = fit
        let cost = perPage * pausedPageFactor, n = max(0, pages)
        let small = samples.filter { $0.seconds > 0 && $0.pages <= Self.smallRoundPages }.suffix(Self.anchorRounds)
        // Moved up only: a round of more pages than the final set stands for it as it is.
        // Moved down along the line's slope the anchor crossed zero (0.0 ms predicted for 56
        // pages, 0.38 ms taken), and over 96 runs the one-sided rule was the less biased.
        guard let anchored = small.map({ $0.seconds + Double(max(0, n - $0.pages)) * cost }).min() else {
            return overhead + Double(n) * cost
        }
        return anchored
    }

    /// The pause a stop-and-copy of `pages` pages would cause now.
    public func predict(pages: Int) -> Prediction {
        var phases = PausePhases()
        phases.stopVCPUs = stopVCPUs
        phases.harvest = harvest
        phases.finalRound = finalRound(pages: pages)
        phases.balloonUpdate = balloonUpdate
        phases.stateSave = stateSave
        phases.stateSend = sendRate > 0 ? Double(max(0, stateBytes)) / sendRate : 0
        phases.commitToPrepared = roundTrip + destinationPrepare
        phases.goToDone = (Self.commitRoundTrips - 1) * roundTrip + destinationStart
        let fixed = phases.stopVCPUs + phases.harvest + phases.balloonUpdate + phases.stateSave + phases.stateSend
            + phases.commitToPrepared + phases.goToDone
        return Prediction(pagesSeconds: phases.finalRound, fixedSeconds: fixed, phases: phases)
    }
}
