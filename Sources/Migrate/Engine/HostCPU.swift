import Foundation

/// The host's idle CPU time, from /proc/stat (Linux): with the vCPUs' own times it tells
/// `DowntimePredictor` whether the running guest held the pre-copy rounds back (a host with
/// no idle core) or not (idle cores: the rounds were limited by something else).
enum HostCPU {
    /// Seconds all cores have spent idle or waiting for I/O since boot; nil where /proc/stat
    /// cannot be read or parsed (then the predictor assumes no contention).
    static func idleSeconds() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = text.split(separator: "\n", maxSplits: 1).first, line.hasPrefix("cpu ") else { return nil }
        // cpu user nice system idle iowait …, in clock ticks (USER_HZ).
        let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard fields.count >= 5 else { return nil }
        let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard ticksPerSecond > 0 else { return nil }
        return (fields[3] + fields[4]) / ticksPerSecond
    }
}
