import Testing

@testable import Migrate

@Suite("the destination's commit work estimate (PONG_WORK)")
struct CommitWorkEstimateTests {
    @Test("before PREPARED: the lower median of the last five rehearsals; before DONE: the record and the fastest thread start per vCPU")
    func estimateFromRecentRehearsals() {
        var e = CommitWorkEstimate()
        #expect(e.prepare == 0 && e.start == 0 && e.micros == (0, 0))
        for (prepare, thread) in [(0.001, 0.0009), (0.030, 0.0002), (0.0012, 0.050), (0.0011, 0.0021)] {
            e.record(prepare: prepare, threadStart: thread)
        }
        #expect(e.prepare == 0.0011, "one preempted rehearsal (30 ms) does not move it")
        #expect(e.start == 0.0002)
        e.record = 0.0015
        e.vcpus = 2
        #expect(abs(e.start - (0.0015 + 2 * 0.0002)) < 1e-12)
        for _ in 0..<5 { e.record(prepare: 0.004, threadStart: 0.0003) }
        #expect(e.prepares == Array(repeating: 0.004, count: 5) && e.threadStarts.min() == 0.0003, "only the last five count")
    }

    @Test("invalid samples are ignored; the wire value is whole microseconds, rounded up and clamped")
    func wireValues() {
        var e = CommitWorkEstimate()
        e.record(prepare: -1, threadStart: .nan)
        e.record(prepare: .infinity, threadStart: 0.0000101)
        #expect(e.prepares.isEmpty && e.threadStarts == [0.0000101])
        #expect(e.micros == (0, 11))
        #expect(CommitWorkEstimate.micros(1e9) == UInt32.max && CommitWorkEstimate.micros(0.0025) == 2500)
    }

    @Test("starting a thread is timed until it runs")
    func threadStart() {
        let seconds = CommitWorkEstimate.threadStartSeconds()
        #expect(seconds > 0 && seconds < 60, "\(seconds) s")
    }
}
