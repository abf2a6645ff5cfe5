import Core
import Foundation

/// How to migrate (the CLI's `send` options map onto this).
public struct MigrationOptions: Sendable {
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

    func validate() throws(MigrationError) {
        guard downtimeTarget > 0 else { throw .invalidOptions("the downtime target must be positive") }
        guard (1...64).contains(streams) else { throw .invalidOptions("streams must be 1–64") }
        guard (1...1024).contains(batchPages) else { throw .invalidOptions("batch size must be 1–1024 pages") }
        if let b = bandwidthLimit, !(b >= 1_048_576) { throw .invalidOptions("the bandwidth limit must be at least 1 MiB/s") }
        guard maxTime > 0, timeout > 0 else { throw .invalidOptions("times must be positive") }
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
    /// the pages it expected to send (the harvest while paused may add a few).
    public var downtimeTargetSeconds = 0.0
    public var predictedDowntimeSeconds = 0.0
    public var predictedFixedSeconds = 0.0
    public var predictedFinalPages = 0
    /// Time the final (paused) round took to send its pages: the rest of the pause is fixed cost.
    public var finalRoundSeconds = 0.0
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
