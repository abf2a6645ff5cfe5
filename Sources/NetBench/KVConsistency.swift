// Is every acknowledged SET kept (issue 14: "no acknowledged SET lost, ever")? Pure checks of
// the generator's records: every GET answered during the load, and one GET per key at the
// end (at the destination, after a migration).

/// What the checks found.
public struct KVVerdict: Codable, Sendable, Equatable {
    /// SETs the store acknowledged (OK) during the load.
    public var acknowledgedSets = 0
    /// GETs answered during the load, each checked against the SETs acknowledged before it was sent.
    public var getsChecked = 0
    /// Keys read at the end, and how many of them lack their last acknowledged value.
    public var keysVerified = 0
    public var acknowledgedSetsLost = 0
    /// Keys the final read got no answer for (nothing can be said about them: a failure too).
    public var keysUnanswered = 0
    /// Every violation (the first 20 described).
    public var violations = 0
    public var examples: [String] = []

    public init() {}

    public var passed: Bool { violations == 0 && acknowledgedSetsLost == 0 && keysUnanswered == 0 }

    mutating func violation(_ text: String) {
        violations += 1
        if examples.count < 20 { examples.append(text) }
    }
}

public enum KVConsistency {
    /// The SETs of one key: (id, sent, acknowledged) in id (= send) order.
    struct KeySets {
        var sets: [(id: Int, sent: UInt64, acked: UInt64?)] = []
        /// Acknowledgment times ascending, with the highest SET id acknowledged up to each.
        var acks: [(at: UInt64, maxID: Int)] = []

        mutating func finish() {
            var byTime = sets.compactMap { s in s.acked.map { (at: $0, id: s.id) } }.sorted { $0.at < $1.at }
            var best = -1
            for i in byTime.indices {
                best = max(best, byTime[i].id)
                byTime[i].id = best
            }
            acks = byTime.map { (at: $0.at, maxID: $0.id) }
        }

        /// The highest SET id acknowledged strictly before `ns`, if any.
        func lastAcknowledged(before ns: UInt64) -> Int? {
            var lo = 0, hi = acks.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if acks[mid].at < ns { lo = mid + 1 } else { hi = mid }
            }
            return lo == 0 ? nil : acks[lo - 1].maxID
        }
    }

    static func keySets(_ records: [KVRecord], plan: KVLoadPlan) -> [Int: KeySets] {
        var keys: [Int: KeySets] = [:]
        for r in records where plan.kind(of: r.id) == .set {
            keys[plan.key(of: r.id), default: KeySets()].sets.append((r.id, r.sentNs, r.answer == .ok ? r.replyNs : nil))
        }
        for k in keys.keys { keys[k]!.finish() }
        return keys
    }

    /// Checks one value read for `key`: it must come from a SET of that key at least as new as
    /// `atLeast` (the last one acknowledged before the read was sent) and sent before `readBy`.
    static func check(_ answer: KVAnswer, key: Int, atLeast: Int?, readBy: UInt64, sets: KeySets?, plan: KVLoadPlan,
                      what: String, into verdict: inout KVVerdict) -> Bool {
        let name = KVLoadPlan.keyName(key)
        switch answer {
        case .notFound:
            if let atLeast {
                verdict.violation("\(what) \(name): NOTFOUND after SET \(atLeast) was acknowledged")
                return false
            }
        case let .value(v):
            if let id = plan.setID(of: v), id < plan.firstID, plan.key(of: id) == key {
                // Written by an earlier load: fine only while no SET of this load was acknowledged.
                guard let atLeast else { return true }
                verdict.violation("\(what) \(name): the value of SET \(id) of an earlier load, after SET \(atLeast) was acknowledged")
                return false
            }
            guard let id = plan.setID(of: v), plan.key(of: id) == key,
                  let set = sets?.sets.first(where: { $0.id == id }) else {
                verdict.violation("\(what) \(name): a value no SET of this key wrote (\(v.prefix(40)))")
                return false
            }
            if let atLeast, id < atLeast {
                verdict.violation("\(what) \(name): the value of SET \(id), older than acknowledged SET \(atLeast)")
                return false
            }
            if set.sent > readBy {
                verdict.violation("\(what) \(name): the value of SET \(id), sent after the answer came")
                return false
            }
        case .ok, .error:
            verdict.violation("\(what) \(name): answered \(answer)")
            return false
        }
        return true
    }

    /// Checks every GET answered during the load.
    public static func checkLoad(_ records: [KVRecord], plan: KVLoadPlan) -> KVVerdict {
        var verdict = KVVerdict()
        let keys = keySets(records, plan: plan)
        verdict.acknowledgedSets = keys.values.reduce(0) { $0 + $1.acks.count }
        for r in records where plan.kind(of: r.id) == .get {
            guard let answer = r.answer, let replyNs = r.replyNs else { continue }
            let key = plan.key(of: r.id)
            verdict.getsChecked += 1
            _ = check(answer, key: key, atLeast: keys[key]?.lastAcknowledged(before: r.sentNs), readBy: replyNs,
                      sets: keys[key], plan: plan, what: "GET \(r.id)", into: &verdict)
        }
        return verdict
    }

    /// Adds the final reads (`finals`: key → answer, nil when no answer came) to `verdict`:
    /// every key any SET wrote must hold its last acknowledged value or a later SET's.
    public static func verifyFinal(_ records: [KVRecord], plan: KVLoadPlan, finals: [Int: KVAnswer?],
                                   into verdict: inout KVVerdict) {
        let keys = keySets(records, plan: plan)
        for key in keys.keys.sorted() {
            let sets = keys[key]
            let lastAck = sets?.acks.last?.maxID
            guard let read = finals[key], let answer = read else {
                verdict.keysUnanswered += 1
                if verdict.examples.count < 20 { verdict.examples.append("final GET \(KVLoadPlan.keyName(key)): no answer") }
                continue
            }
            verdict.keysVerified += 1
            let before = verdict.violations
            if !check(answer, key: key, atLeast: lastAck, readBy: .max, sets: sets, plan: plan, what: "final GET", into: &verdict),
               lastAck != nil {
                // Not a load violation but the loss the final read exists to find.
                verdict.violations = before
                verdict.acknowledgedSetsLost += 1
            }
        }
    }
}
