import Foundation

/// Where a received request's time goes on the host, for docs/benchmarks.md's breakdown of the
/// NIC round trip: off unless the environment variable `PVMIGRATE_NET_TRACE` is set (then
/// `pvmigrate run` prints the medians when the VM ends). It follows one request at a time
/// through the path where the vCPU thread reads the TAP during NET_SLEEP (`TapReceiver`):
///
///   TAP readable (the vCPU thread's poll returned) → frames delivered into the RX ring →
///   KVM_RUN entered → the guest's NET_SLEEP exit back in the VMM → the answer written to the TAP.
///
/// The client's round trip minus the first-to-last span is the kernel's and the wake-ups' share.
public enum NetTrace {
    public enum Stage: Int, CaseIterable, Sendable {
        case tapReadable, delivered, runEntered, sleepExit, tapWritten
    }

    public static let enabled = ProcessInfo.processInfo.environment["PVMIGRATE_NET_TRACE"] != nil

    private struct State {
        var open: [UInt64?] = Array(repeating: nil, count: Stage.allCases.count)
        var spans: [[UInt64]] = Array(repeating: [], count: Stage.allCases.count - 1)
    }
    private static let state = Locked(State())

    /// Stamps `stage` (CLOCK_MONOTONIC) for the request being followed: `tapReadable` starts
    /// one; a stage whose predecessor is missing, or stamped again, is ignored; `tapWritten`
    /// completes it. Call only when `enabled`.
    public static func mark(_ stage: Stage) {
        let now = DispatchTime.now().uptimeNanoseconds
        state.withLock { s in
            if stage == .tapReadable {
                s.open = Array(repeating: nil, count: Stage.allCases.count)
                s.open[0] = now
                return
            }
            guard s.open[stage.rawValue - 1] != nil, s.open[stage.rawValue] == nil else { return }
            s.open[stage.rawValue] = now
            guard stage == .tapWritten else { return }
            let stamps = s.open.compactMap { $0 }
            for i in 1..<stamps.count where s.spans[i - 1].count < 1_000_000 {
                s.spans[i - 1].append(stamps[i] - stamps[i - 1])
            }
            s.open = Array(repeating: nil, count: Stage.allCases.count)
        }
    }

    /// The medians of each span over the requests followed (nil if none completed).
    public static func summary() -> String? {
        let spans = state.withLock { $0.spans }
        guard let count = spans.first?.count, count > 0 else { return nil }
        func median(_ v: [UInt64]) -> Double { Double(v.sorted()[v.count / 2]) / 1000 }
        let names = ["TAP readable → delivered", "→ KVM_RUN", "→ NET_SLEEP exit (guest + world switches)", "→ answer written to the TAP"]
        let parts = zip(names, spans).map { String(format: "%@ %.1f µs", $0, median($1)) }
        let total = (0..<count).map { i in spans.reduce(0) { $0 + $1[i] } }
        return "NIC trace, medians over \(count) requests: " + parts.joined(separator: ", ")
            + String(format: "; TAP readable → answer written %.1f µs", median(total))
    }
}
