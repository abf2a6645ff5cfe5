import Core
import Foundation

/// How to migrate: `send`'s options, the control protocol's `migrate` arguments (its
/// `Codable` form, protocol.md §4) and the engine's settings are this one type, checked by
/// its one `validate()`.
public struct MigrationOptions: Sendable, Equatable {
    /// Stop-and-copy once the remaining set fits this pause (seconds).
    public var downtimeTarget: Double = 0.050
    /// Cap on bytes per second on the wire; nil = as fast as possible.
    public var bandwidthLimit: Double?
    /// Give up (the VM keeps running here) if not converged after this many seconds.
    public var maxTime: Double = 300
    /// Parallel TCP/TLS streams (protocol.md §3.1). Default: one per core.
    public var streams: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// zstd level for page batches; nil = no compression.
    public var compressionLevel: Int32? = 1
    /// Skip compression while the link carries bytes faster than zstd saves them (zstd
    /// stays on for a slow link or a `bandwidthLimit`). On by default since 2026-11-30: on
    /// loopback it cut source + destination CPU-seconds per GiB moved by 23–33 % and total
    /// time by 40–50 % against always compressing, for 1.85× the bytes on compressible
    /// pages and fewer on incompressible ones (docs/benchmarks.md, "Compression policy").
    public var adaptiveCompression = true
    /// Send changed pages as XOR deltas against the copy last sent.
    public var delta = true
    public var deltaCacheBytes = 64 << 20
    public var dirtySource: DirtySourceMode = .pvVerified
    /// Slow the guest down when it dirties faster than the link carries.
    public var autoConverge = true
    /// Network read timeout (seconds).
    public var timeout: Double = 30
    /// Pages per PAGES batch (≤ 1024).
    public var batchPages = 256

    public init() {}

    /// These options with only the encodings `granted` allows (HELLO_ACK, protocol.md §3.2):
    /// no zstd without ZSTD, no deltas without DELTA.
    public func restricted(to granted: Capabilities) -> MigrationOptions {
        var o = self
        if !granted.contains(.zstd) { o.compressionLevel = nil }
        if !granted.contains(.delta) { o.delta = false }
        return o
    }

    // The ranges `validate()` enforces (protocol.md §4 states them).
    public static let downtimeTargets: ClosedRange<Double> = 0.001...600
    public static let bandwidthLimits: ClosedRange<Double> = 1_048_576...1e13
    public static let streamCounts: ClosedRange<Int> = 1...64
    public static let compressionLevels: ClosedRange<Int32> = 1...22
    public static let maxTimes: ClosedRange<Double> = 0.001...86_400
    public static let batchSizes: ClosedRange<Int> = 1...PageBatchLayout.maximumCount

    /// The one check of migration options, wherever they come from (`send`'s flags, a
    /// `migrate` request, a program): `MigrationSender` runs it before anything else, so no
    /// option outside its range reaches the encoders (e.g. `PageBatchEncoder`'s zstd level).
    public func validate() throws(MigrationError) {
        func range<T: Comparable>(_ value: T, _ range: ClosedRange<T>, _ what: String) throws(MigrationError) {
            guard range.contains(value) else { throw .invalidOptions(what) }
        }
        try range(downtimeTarget, Self.downtimeTargets, "the downtime target must be 1–600000 ms")
        if let b = bandwidthLimit {
            try range(b, Self.bandwidthLimits, "the bandwidth limit must be at least 1 MiB/s (1048576 bytes/s) and at most 1e13 bytes/s")
        }
        try range(streams, Self.streamCounts, "streams must be 1–64")
        if let level = compressionLevel {
            try range(level, Self.compressionLevels, "the compression level must be a zstd level 1–22 (or off)")
        }
        try range(maxTime, Self.maxTimes, "the maximum time must be 0.001–86400 s")
        try range(batchPages, Self.batchSizes, "batch size must be 1–\(PageBatchLayout.maximumCount) pages")
        guard timeout > 0, timeout.isFinite else { throw .invalidOptions("the network timeout must be a positive number of seconds") }
        guard deltaCacheBytes >= 0 else { throw .invalidOptions("the delta cache size must not be negative") }
    }
}

/// The `migrate` arguments of the control protocol (protocol.md §4): the options a client
/// may set, each under its §4 key; absent keys keep their defaults. The other options
/// (delta cache size, auto-converge, network timeout, batch size) are the migrating
/// host's own and do not travel. Decoding checks only types; `validate()` checks ranges.
extension MigrationOptions: Codable {
    public enum CodingKeys: String, CodingKey, CaseIterable {
        case downtime = "downtime_ms", bandwidth, streams, compression
        case adaptiveCompression = "adaptive_compression", delta
        case dirtySource = "dirty_source", maxTime = "max_time_s"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init()
        func value<T: Decodable>(_ key: CodingKeys, _ must: String) throws(MigrationError) -> T? {
            try c.argument(key) { MigrationError.invalidOptions("\"\($0)\" must be \(must)") }
        }
        if let ms: Double = try value(.downtime, "a number of milliseconds") { downtimeTarget = ms / 1000 }
        if let b: Double = try value(.bandwidth, "a number of bytes per second, or 0 for no cap") { bandwidthLimit = b == 0 ? nil : b }
        if let n: Int = try value(.streams, "a whole number") { streams = n }
        if let level: Int32 = try value(.compression, "a zstd level 1–22, or 0 for off") { compressionLevel = level == 0 ? nil : level }
        if let a: Bool = try value(.adaptiveCompression, "true or false") { adaptiveCompression = a }
        if let d: Bool = try value(.delta, "true or false") { delta = d }
        if let mode: DirtySourceMode = try value(.dirtySource, "\"pv-verified\", \"kvm\", \"pv\" or \"hybrid\"") { dirtySource = mode }
        if let t: Double = try value(.maxTime, "a number of seconds") { maxTime = t }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(downtimeTarget * 1000, forKey: .downtime)
        try c.encodeIfPresent(bandwidthLimit, forKey: .bandwidth)
        try c.encode(streams, forKey: .streams)
        try c.encode(compressionLevel ?? 0, forKey: .compression)
        try c.encode(adaptiveCompression, forKey: .adaptiveCompression)
        try c.encode(delta, forKey: .delta)
        try c.encode(dirtySource, forKey: .dirtySource)
        try c.encode(maxTime, forKey: .maxTime)
    }
}

/// One pre-copy round, as the progress display and the statistics show it.
public struct RoundStats: Sendable, Codable, Equatable {
    public var round: Int
    public var pages = 0
    public var zeroPages = 0, rawPages = 0, deltaPages = 0
    /// Bytes written to the streams (headers included; TLS overhead not).
    public var wireBytes: UInt64 = 0
    public var seconds = 0.0
    /// wireBytes / seconds.
    public var bandwidth = 0.0
    /// Pages found dirty when this round ended (the next round's size).
    public var dirtyPages = 0
    /// dirtyPages / seconds.
    public var dirtyRate = 0.0
    /// The pause a stop-and-copy of dirtyPages would cause now (`DowntimePredictor`).
    public var expectedDowntime = 0.0
    /// Guest throttle in force during the round: PV pages/s, or vCPU fraction × 1000.
    public var throttle: UInt32 = 0
    /// The harvest that ended the round, and of it KVM's dirty log (absent in older records).
    public var harvestSeconds: Double?
    public var harvestKVMSeconds: Double?
    /// Of KVM's dirty log: re-arming it (KVM_CLEAR_DIRTY_LOG), which the paused final harvest skips.
    public var harvestKVMRearmSeconds: Double?
    /// Of the harvest: the guest's PV ring (its drain and, with the guest running, HARVEST_BARRIER).
    public var harvestPVSeconds: Double?
    /// CPU seconds the round's senders spent (stream workers and this thread), and the guest's
    /// vCPUs meanwhile: how much the running guest competed with the round (`DowntimePredictor`).
    public var cpuSeconds: Double?
    public var guestCPUSeconds: Double?
    /// Idle CPU time of the whole host during the round (all cores; /proc/stat).
    public var hostIdleSeconds: Double?
}

/// The outcome of a migration: produced by the engine, printed by the CLI and the benchmarks.
public struct MigrationStats: Sendable, Codable, Equatable {
    public var memoryBytes: UInt64 = 0
    public var streams = 0
    public var totalSeconds = 0.0
    /// Guest paused on the source → resumed on the destination (acknowledged).
    public var downtimeSeconds = 0.0
    /// The target stop-and-copy was started for, and what `DowntimePredictor` predicted
    /// when it started: the pause, its fixed part (harvest, state, commit round trip), and
    /// the pages it expected to send (the last harvest's and the guest's expected writes until
    /// the vCPUs stop: `DowntimePredictor.finalPages`).
    public var downtimeTargetSeconds = 0.0
    public var predictedDowntimeSeconds = 0.0
    public var predictedFixedSeconds = 0.0
    public var predictedFinalPages = 0
    /// Time the final (paused) round took to send its pages: the rest of the pause is fixed cost.
    public var finalRoundSeconds = 0.0
    /// The pause phase by phase as the source timed it (nil until a pause completed), and as
    /// `DowntimePredictor` predicted it when stop-and-copy started.
    public var pausePhases: PausePhases?
    public var predictedPausePhases: PausePhases?
    public var wireBytes: UInt64 = 0
    public var rounds: [RoundStats] = []
    public var zeroPages = 0, rawPages = 0, deltaPages = 0
    public var deltaHitRate = 0.0
    public var finalPages = 0
    public var pagesWithData: UInt64 = 0
    public var digest: UInt64 = 0
    public var dirtySource = DirtySourceMode.pvVerified
    public var throttled = false
    /// The verification sweep before the pause (protocol.md §3.5.2).
    public var verification = VerificationStats()

    /// CPU seconds (user + system) the source's migration threads used: workers summed per
    /// thread (`CPUMeter`), so the figure holds when both ends share a process.
    public var cpuSeconds = 0.0

    public var pagesSent: Int { zeroPages + rawPages + deltaPages }

    public init() {}

    /// CPU seconds per GiB of guest memory moved (pages sent × 4 KiB).
    public var cpuSecondsPerGiB: Double { Self.perGiB(cpuSeconds, pages: pagesSent) }

    /// Bytes per second on the wire while rounds were being sent (pre-copy rounds and the
    /// final round's pages; connection set-up and the commit are not link time).
    public var wireBytesPerSecond: Double {
        let sending = rounds.dropLast().reduce(0) { $0 + $1.seconds } + finalRoundSeconds
        return sending > 0 ? Double(wireBytes) / sending : 0
    }

    static func perGiB(_ seconds: Double, pages: Int) -> Double {
        pages > 0 ? seconds / (Double(pages) * 4096 / Double(1 << 30)) : 0
    }
}

extension KeyedDecodingContainer {
    /// An optional argument of a request (protocol.md §4): nil when `key` is absent or null,
    /// its value when it decodes as `T`, else the error `failure` makes of the key's name.
    public func argument<T: Decodable, E: Error>(_ key: Key, else failure: (String) -> E) throws(E) -> T? {
        do {
            guard contains(key), try !decodeNil(forKey: key) else { return nil }
            return try decode(T.self, forKey: key)
        } catch {
            throw failure(key.stringValue)
        }
    }
}
