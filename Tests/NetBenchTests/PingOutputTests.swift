import NetBench
import Testing

/// iputils ping's -D -O output, parsed and summarised on the monotonic clock.
@Suite struct PingOutputTests {
    static let sample = """
        PING 192.0.2.2 (192.0.2.2) 56(84) bytes of data.
        [1000.000500] 64 bytes from 192.0.2.2: icmp_seq=1 ttl=64 time=0.500 ms
        [1000.002400] 64 bytes from 192.0.2.2: icmp_seq=2 ttl=64 time=0.400 ms
        [1000.002500] 64 bytes from 192.0.2.2: icmp_seq=2 ttl=64 time=0.500 ms (DUP!)
        [1000.006000] no answer yet for icmp_seq=3
        [1000.008000] no answer yet for icmp_seq=4
        [1000.010300] 64 bytes from 192.0.2.2: icmp_seq=6 ttl=64 time=0.300 ms
        [10x0.0] 64 bytes from 192.0.2.2: icmp_seq=7 ttl=64 time=0.300 ms

        --- 192.0.2.2 ping statistics ---
        6 packets transmitted, 3 received, +1 duplicates, 50% packet loss, time 10ms
        rtt min/avg/max/mdev = 0.300/0.400/0.500/0.081 ms
        """

    @Test func repliesSkipDuplicatesAndBadLines() {
        let p = PingOutput(Self.sample)
        #expect(p.replies.map(\.sequence) == [1, 2, 6])
        #expect(p.replies[0].realtimeNs == 1_000_000_500_000 && p.replies[0].rttNs == 500_000)
        #expect(p.unansweredSequences == [3, 4])
        #expect(p.transmitted == 6 && p.sent == 6)
        #expect(PingOutput("[1.5] 64 bytes from x: icmp_seq=9 ttl=64 time=1 ms").sent == 9, "no summary: the highest sequence")
    }

    @Test func summaryOnTheMonotonicClock() {
        // Wall clock = monotonic + 999 s: the first reply was at monotonic 1.0005 s.
        let offset: Int64 = 999_000_000_000
        let window = PhaseWindow(migrationStartNs: 1_004_000_000, migrationEndNs: 1_009_000_000)
        let s = PingOutput(Self.sample).summary(window: window, realtimeMinusMonotonicNs: offset, intervalNs: 2_000_000)
        #expect(s.sent == 6 && s.answered == 3 && s.lost == 3)
        #expect(s.latency(.before)?.count == 2 && s.latency(.after)?.count == 1)
        // The longest silence: the answer at 1.0024 s to the one at 1.0103 s.
        #expect(abs(s.blackout.milliseconds - 7.9) < 1e-6)
    }
}
