// iputils ping's per-reply output with -D (a [seconds.micros] wall-clock stamp on every line)
// and -O (a line for each request still unanswered when the next one goes out):
//
//   [1764495193.123456] 64 bytes from 192.0.2.2: icmp_seq=1 ttl=64 time=0.332 ms
//   [1764495193.125456] no answer yet for icmp_seq=2
//   500 packets transmitted, 498 received, 0.4% packet loss, time 1003ms
//
// Pure parsing; ping's text is input like any other (a line that does not parse is skipped).

import Foundation

public struct PingOutput: Sendable, Equatable {
    public struct Reply: Sendable, Equatable {
        public var sequence: Int
        /// When ping printed the reply, CLOCK_REALTIME nanoseconds.
        public var realtimeNs: UInt64
        public var rttNs: UInt64
    }

    /// First answer per sequence number, in output order (duplicates dropped).
    public var replies: [Reply] = []
    /// The summary's "N packets transmitted" (nil if ping did not print it).
    public var transmitted: Int?
    /// Sequence numbers ping reported as unanswered when the next request went out.
    public var unansweredSequences: Set<Int> = []

    public init(_ text: String) {
        var seen = Set<Int>()
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingPrefix(" ")
            if let n = Self.transmittedCount(line) { transmitted = n; continue }
            guard let stamp = Self.stamp(line), let seq = Self.number(after: "icmp_seq=", in: line) else { continue }
            if line.contains("no answer yet") {
                unansweredSequences.insert(seq)
                continue
            }
            guard line.contains(" bytes from "), !line.contains("DUP!"), let rtt = Self.milliseconds(line),
                  seen.insert(seq).inserted else { continue }
            replies.append(Reply(sequence: seq, realtimeNs: stamp, rttNs: rtt))
        }
    }

    /// Requests sent: the summary's count, else the highest sequence number seen.
    public var sent: Int {
        transmitted ?? max(replies.map(\.sequence).max() ?? 0, unansweredSequences.max() ?? 0)
    }

    /// The summary over the monotonic clock: `realtimeMinusMonotonicNs` converts ping's
    /// wall-clock stamps (measured by the caller while ping ran). Each request's send time is
    /// its answer's time minus its round trip; unanswered requests are placed by sequence number
    /// between their neighbours (they count as lost, not in the latencies).
    public func summary(window: PhaseWindow, realtimeMinusMonotonicNs offset: Int64, intervalNs: UInt64) -> ClientSummary {
        var requests: [(sent: UInt64, answered: UInt64?)] = replies.map { r in
            let answered = UInt64(max(0, Int64(r.realtimeNs) - offset))
            return (answered >= r.rttNs ? answered - r.rttNs : 0, answered)
        }
        if let first = replies.first {
            // Place the unanswered ones by sequence from the first reply (send times only
            // matter for the phase and the load's end).
            let firstSent = requests[0].sent
            let answeredSeqs = Set(replies.map(\.sequence))
            for seq in 1...max(1, sent) where !answeredSeqs.contains(seq) {
                let at = Int64(firstSent) + (Int64(seq) - Int64(first.sequence)) * Int64(intervalNs)
                requests.append((UInt64(max(0, at)), nil))
            }
        }
        return ClientSummary(requests: requests, window: window)
    }

    static func stamp(_ line: Substring) -> UInt64? {
        guard line.first == "[", let close = line.firstIndex(of: "]") else { return nil }
        let parts = line[line.index(after: line.startIndex)..<close].split(separator: ".")
        guard parts.count == 2, let s = UInt64(parts[0]), parts[1].count <= 9, let frac = UInt64(parts[1]) else { return nil }
        var scale: UInt64 = 1
        for _ in parts[1].count..<9 { scale *= 10 }
        return s * 1_000_000_000 + frac * scale
    }

    static func number(after tag: String, in line: Substring) -> Int? {
        guard let r = line.range(of: tag) else { return nil }
        return Int(line[r.upperBound...].prefix { $0.isNumber })
    }

    /// "time=0.332 ms" → nanoseconds.
    static func milliseconds(_ line: Substring) -> UInt64? {
        guard let r = line.range(of: "time="), let ms = Double(line[r.upperBound...].prefix { $0 != " " }),
              ms >= 0, ms < 1e7 else { return nil }
        return UInt64((ms * 1e6).rounded())
    }

    static func transmittedCount(_ line: Substring) -> Int? {
        guard let r = line.range(of: " packets transmitted") else { return nil }
        return Int(line[..<r.lowerBound])
    }
}
