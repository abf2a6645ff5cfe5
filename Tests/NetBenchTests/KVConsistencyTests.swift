import NetBench
import Testing

/// "No acknowledged SET lost": the checks of GETs during the load and of the final reads.
@Suite struct KVConsistencyTests {
    // Two sockets: even ids SET, odd ids GET; one key, so every request is on key nb0.
    let plan = KVLoadPlan(rate: 1000, sockets: 2, keys: 1, valueBytes: 16)

    func record(_ id: Int, sent: UInt64, reply: UInt64?, _ answer: KVAnswer?) -> KVRecord {
        KVRecord(id: id, sentNs: sent, replyNs: reply, answer: answer)
    }

    @Test func freshOrInFlightValuesPassAndStaleOrMissingOnesFail() {
        let good = [
            record(0, sent: 0, reply: 10, .ok),                           // SET 0 acknowledged at 10
            record(1, sent: 5, reply: 12, .notFound),                     // GET sent before that: NOTFOUND is fine
            record(2, sent: 20, reply: nil, nil),                         // SET 2 lost (or its OK was)
            record(3, sent: 21, reply: 30, .value(plan.value(of: 2))),    // its value may be there
            record(5, sent: 40, reply: 45, .value(plan.value(of: 0))),    // or not: SET 0 is the last acknowledged
        ]
        let v = KVConsistency.checkLoad(good, plan: plan)
        #expect(v.acknowledgedSets == 1 && v.getsChecked == 3)
        #expect(v.passed, "\(v.examples)")

        let stale = [record(0, sent: 0, reply: 10, .ok), record(2, sent: 20, reply: 25, .ok),
                     record(3, sent: 30, reply: 35, .value(plan.value(of: 0)))]
        let s = KVConsistency.checkLoad(stale, plan: plan)
        #expect(s.violations == 1 && !s.passed)
        #expect(s.examples.first?.contains("older than acknowledged SET 2") == true, "\(s.examples)")

        let vanished = [record(0, sent: 0, reply: 10, .ok), record(1, sent: 11, reply: 15, .notFound)]
        #expect(KVConsistency.checkLoad(vanished, plan: plan).violations == 1)

        let forged = [record(1, sent: 0, reply: 5, .value("v99-xxxxxxxxxxxx"))]
        #expect(KVConsistency.checkLoad(forged, plan: plan).violations == 1, "a value no SET sent")

        let fromTheFuture = [record(1, sent: 0, reply: 5, .value(plan.value(of: 2))), record(2, sent: 9, reply: 12, .ok)]
        #expect(KVConsistency.checkLoad(fromTheFuture, plan: plan).violations == 1)
    }

    @Test func theFinalReadFindsLostAcknowledgedSets() {
        let records = [record(0, sent: 0, reply: 10, .ok), record(2, sent: 20, reply: 30, .ok), record(4, sent: 40, reply: nil, nil)]
        for (final, lost) in [(KVAnswer.value(plan.value(of: 2)), 0), (.value(plan.value(of: 4)), 0),
                              (.value(plan.value(of: 0)), 1), (.notFound, 1)] {
            var v = KVVerdict()
            KVConsistency.verifyFinal(records, plan: plan, finals: [0: final], into: &v)
            #expect(v.keysVerified == 1 && v.acknowledgedSetsLost == lost, "\(final)")
            #expect(v.passed == (lost == 0))
        }
        var unanswered = KVVerdict()
        KVConsistency.verifyFinal(records, plan: plan, finals: [0: KVAnswer?.none], into: &unanswered)
        #expect(unanswered.keysUnanswered == 1 && !unanswered.passed)
        var missing = KVVerdict()
        KVConsistency.verifyFinal(records, plan: plan, finals: [:], into: &missing)
        #expect(missing.keysUnanswered == 1)
    }

    @Test func aValueFromAnEarlierLoadCountsOnlyUntilThisLoadsFirstAcknowledgedSet() {
        let later = KVLoadPlan(rate: 1000, sockets: 2, keys: 1, valueBytes: 16, firstID: 100)
        let old = later.value(of: 50) // written by an earlier load (ids below 100)
        let before = [KVRecord(id: 100, sentNs: 0, replyNs: nil), KVRecord(id: 101, sentNs: 1, replyNs: 5, answer: .value(old))]
        #expect(KVConsistency.checkLoad(before, plan: later).passed)
        var v = KVVerdict()
        KVConsistency.verifyFinal(before, plan: later, finals: [0: .value(old)], into: &v)
        #expect(v.passed, "no SET of this load was acknowledged: the earlier value stands")
        let after = [KVRecord(id: 100, sentNs: 0, replyNs: 2, answer: .ok), KVRecord(id: 101, sentNs: 3, replyNs: 5, answer: .value(old))]
        #expect(KVConsistency.checkLoad(after, plan: later).violations == 1)
        var lost = KVVerdict()
        KVConsistency.verifyFinal(after, plan: later, finals: [0: .value(old)], into: &lost)
        #expect(lost.acknowledgedSetsLost == 1)
        var ledger = KVLedger(plan: later)
        #expect(ledger.sent(at: 0) == 100 && ledger.record(100).sentNs == 0)
    }
}
