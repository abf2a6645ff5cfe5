/// Predicts how long the stop-and-copy pause will last, from what the pre-copy rounds measured
/// on this link (issue 11, item 2). The source starts stop-and-copy only when the prediction
/// fits the downtime target, and `MigrationStats` records the prediction next to the actual
/// pause, so the model is checked against reality on every migration.
///
/// The model of the pause:
///
///     pause = roundOverhead + final pages × secondsPerPage      (sending the final round)
///           + harvest + stateSave + 2 × roundTrip               (the fixed part)
///
/// - `secondsPerPage` and `roundOverhead` come from a least-squares line through the recent
///   rounds' (pages, wall-clock seconds): the time a round really took on this link —
///   classification, encoding, compression, TLS and the socket — not bytes ÷ bandwidth. The
///   rounds ran with the guest running (competing for the cores), so on a loaded host the
///   fit is conservative for the paused final round.
/// - `harvest`: the median of the recent harvests' measured times (the pause starts with
///   one). The median, not the last: one harvest slowed by a preemption, or by switching
///   KVM's log on for the sweep, moved the fixed part 1.6 → 11.5 ms between two runs of the
///   same case (docs/benchmarks.md, "Where the pause goes").
/// - `roundTrip`: the HELLO → HELLO_ACK exchange, measured at connect. The commit waits for
///   two acknowledgments: COMMIT → PREPARED and GO → DONE (protocol.md §3.6.3), each with
///   the destination's own work (digest check, state restore; the durable "started" record).
/// - `stateSave`: saving and encoding the vCPU/device state, an estimate (it needs the
///   guest paused, so it cannot be measured before the pause).
///
/// What the model leaves out: work done while paused that does not depend on the final
/// pages (the memory digest no longer is: protocol.md §3.5 keeps it as a running sum) —
/// that would show up as actual > predicted, and `MigrationStats` keeps both so it is seen.
public struct DowntimePredictor: Sendable, Equatable {
    /// One pre-copy round as measured.
    public struct Sample: Sendable, Equatable {
        public var pages: Int
        public var seconds: Double
        public init(pages: Int, seconds: Double) { self.pages = pages; self.seconds = seconds }
    }

    /// A prediction, split into its two parts.
    public struct Prediction: Sendable, Equatable {
        /// Sending the final round's pages (including the per-round overhead).
        public var pagesSeconds: Double
        /// Harvest, state and commit round trip.
        public var fixedSeconds: Double
        public var seconds: Double { pagesSeconds + fixedSeconds }
    }

    /// Rounds the fit looks back on: recent rounds describe the link and the load as they are now.
    public static let window = 6
    /// Cost per page assumed before any round sent a page: 4 KiB at 100 MB/s.
    public static let defaultSecondsPerPage = 4096 / 100e6
    /// Estimated time to save and encode the machine state while paused.
    public static let defaultStateSave = 0.001
    /// Round trips on the control stream in the pause: COMMIT → PREPARED, GO → DONE.
    public static let commitRoundTrips = 2.0

    public private(set) var samples: [Sample] = []
    public var roundTrip = 0.0
    /// The harvest time the prediction uses: the median of `recordHarvest`'s recent ones.
    public var harvest = 0.0
    public private(set) var harvests: [Double] = []
    public var stateSave = DowntimePredictor.defaultStateSave

    public init() {}

    /// Records a finished pre-copy round. Rounds of zero pages say nothing about the cost
    /// per page but still bound the per-round overhead.
    public mutating func record(pages: Int, seconds: Double) {
        guard pages >= 0, seconds.isFinite, seconds >= 0 else { return }
        samples.append(Sample(pages: pages, seconds: seconds))
        if samples.count > Self.window { samples.removeFirst(samples.count - Self.window) }
    }

    /// Records a pre-copy harvest's duration; `harvest` becomes the median of the last
    /// `window` of them.
    public mutating func recordHarvest(seconds: Double) {
        guard seconds.isFinite, seconds >= 0 else { return }
        harvests.append(seconds)
        if harvests.count > Self.window { harvests.removeFirst(harvests.count - Self.window) }
        let sorted = harvests.sorted(), middle = sorted.count / 2
        harvest = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
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

    /// The pause a stop-and-copy of `pages` pages would cause now.
    public func predict(pages: Int) -> Prediction {
        let (perPage, overhead) = fit
        return Prediction(pagesSeconds: overhead + Double(max(0, pages)) * perPage,
                          fixedSeconds: harvest + stateSave + Self.commitRoundTrips * roundTrip)
    }
}
