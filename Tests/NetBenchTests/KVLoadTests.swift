import NetBench
import Testing

/// The request generator's plan (protocol.md §5.7 messages) and the matching of answers to
/// requests, without sockets.
@Suite struct KVLoadTests {
    let plan = KVLoadPlan(rate: 1000, sockets: 4, keys: 3, valueBytes: 20)

    @Test func requestsCycleThroughSocketsThenKeysAndKindFollowsTheSocket() {
        #expect((0..<12).map { plan.socket(of: $0) } == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
        #expect((0..<12).map { plan.key(of: $0) } == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
        #expect(plan.key(of: 12) == 0)
        #expect(plan.kind(of: 4) == .set && plan.kind(of: 5) == .get)
        #expect(plan.message(4) == "SET nb1 v4-" + String(repeating: "x", count: 17))
        #expect(plan.message(7) == "GET nb1")
        #expect(plan.reuseSeconds == 0.012)
    }

    @Test func valuesNameTheirSetAndNothingElseParses() {
        #expect(plan.value(of: 8).utf8.count == 20)
        #expect(plan.setID(of: plan.value(of: 8)) == 8)
        #expect(plan.setID(of: "v8-xx") == nil, "a value of the wrong length")
        #expect(plan.setID(of: plan.value(of: 9)) == nil, "9 is a GET: no SET wrote it")
        #expect(plan.setID(of: "v-1-xxxxxxxxxxxxxxxx") == nil)
        #expect(plan.key(named: "nb2") == 2)
        #expect(plan.key(named: "nb3") == nil && plan.key(named: "nb02") == nil && plan.key(named: "x1") == nil)
    }

    @Test func answersParse() {
        #expect(KVLoadPlan.parse(answer: Array("OK nb1".utf8))! == ("nb1", .ok))
        #expect(KVLoadPlan.parse(answer: Array("VALUE nb1 a b c".utf8))! == ("nb1", .value("a b c")))
        #expect(KVLoadPlan.parse(answer: Array("NOTFOUND nb1".utf8))! == ("nb1", .notFound))
        #expect(KVLoadPlan.parse(answer: Array("ERR full".utf8))!.answer == .error("full"))
        for bad in ["", "OK", "OK nb1 extra", "VALUE nb1", "HELLO nb1", "OK "] {
            #expect(KVLoadPlan.parse(answer: Array(bad.utf8)) == nil, "\(bad)")
        }
        #expect(KVLoadPlan.parse(answer: [0x4f, 0x4b, 0x20, 0xff]) == nil, "not UTF-8")
    }

    @Test func problemsAreNamed() {
        #expect(KVLoadPlan().problem == nil)
        #expect(KVLoadPlan(rate: 0).problem != nil)
        #expect(KVLoadPlan(sockets: 3).problem != nil)
        #expect(KVLoadPlan(keys: 600).problem != nil)
        #expect(KVLoadPlan(valueBytes: 300).problem != nil)
    }

    @Test func answersMatchTheLastRequestOfTheirIdentityOnce() {
        var ledger = KVLedger(plan: plan)
        for t in 0..<6 { _ = ledger.sent(at: UInt64(t) * 1000) }
        // Request 4: SET nb1 on socket 0; request 5: GET nb1 on socket 1.
        #expect(ledger.received(Array("OK nb1".utf8), socket: 0, at: 10_000) == 4)
        #expect(ledger.received(Array("OK nb1".utf8), socket: 0, at: 11_000) == nil, "a duplicate")
        #expect(ledger.received(Array("OK nb1".utf8), socket: 1, at: 11_000) == nil, "OK on a GET socket")
        #expect(ledger.received(Array("NOTFOUND nb0".utf8), socket: 1, at: 12_000) == 1)
        #expect(ledger.received(Array("garbage".utf8), socket: 2, at: 12_000) == nil)
        #expect(ledger.received(Array("ERR full".utf8), socket: 2, at: 12_000) == nil)
        #expect(ledger.stray == 3)
        #expect(ledger.errors == ["full"])
        #expect(ledger.records[4].latencyNs == 6000)
        #expect(ledger.records[1].answer == .notFound)
        // Request 0's identity (socket 0, nb0) is taken by request 12: a late answer goes to 12.
        for t in 6..<13 { _ = ledger.sent(at: UInt64(t) * 1000 + 20_000) }
        #expect(ledger.received(Array("OK nb0".utf8), socket: 0, at: 40_000) == 12)
        #expect(ledger.records[0].replyNs == nil)
        #expect(ledger.waiting(now: 40_000) > 0)
        #expect(ledger.waiting(now: 10_000_000_000) == 0, "everything older than the reuse time is given up")
    }
}

extension KVLoadTests {
    @Test func kernelStampsGiveASecondLatencyBesideTheThreadsOwn() {
        var ledger = KVLedger(plan: plan)
        #expect(ledger.nextID == plan.firstID)
        for t in 0..<4 { _ = ledger.sent(at: UInt64(t) * 1_000_000) }
        #expect(ledger.nextID == plan.firstID + 4)
        // Socket s answers request s: the thread read each 150 µs after its send, the kernel
        // had it 100 µs after; request 3 came without a stamp (counted in the first figure only).
        for s in 0..<4 {
            let sent = UInt64(s) * 1_000_000
            let answer = s % 2 == 0 ? "OK nb0" : "NOTFOUND nb0"
            #expect(ledger.received(Array(answer.utf8), socket: s, at: sent + 150_000, kernelNs: s == 3 ? nil : sent + 100_000) == s)
        }
        let summary = ledger.summary(window: PhaseWindow())
        #expect(summary.latency(.before)?.count == 4 && summary.latency(.before)?.p50Us == 150)
        #expect(summary.latencyKernel(.before)?.count == 3 && summary.latencyKernel(.before)?.p99Us == 100)
        var unstamped = KVLedger(plan: plan)
        _ = unstamped.sent(at: 0)
        _ = unstamped.received(Array("OK nb0".utf8), socket: 0, at: 5)
        #expect(unstamped.summary(window: PhaseWindow()).latencyKernel == nil, "no stamps: no second figure")
    }
}
