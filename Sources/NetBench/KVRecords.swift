// What the generator saw, request by request, and how answers find their request. Pure.

/// One request of the load: when it left, when (and what) its answer came.
public struct KVRecord: Codable, Sendable, Equatable {
    public var id: Int
    /// CLOCK_MONOTONIC nanoseconds, taken just before the datagram was handed to send(2).
    public var sentNs: UInt64
    /// When the receiving thread read the answer (after its wake-up).
    public var replyNs: UInt64?
    /// When the client's kernel received the answer (SO_TIMESTAMPNS, as ping measures); nil
    /// when the datagram carried no stamp (and in files from before it was recorded).
    public var replyKernelNs: UInt64?
    public var answer: KVAnswer?

    public init(id: Int, sentNs: UInt64, replyNs: UInt64? = nil, replyKernelNs: UInt64? = nil, answer: KVAnswer? = nil) {
        self.id = id; self.sentNs = sentNs; self.replyNs = replyNs; self.replyKernelNs = replyKernelNs; self.answer = answer
    }

    public var latencyNs: UInt64? { replyNs.map { $0 >= sentNs ? $0 - sentNs : 0 } }
}

/// The records of one run and the matching of answers to them: an answer on socket `s` for
/// key `k` belongs to the last request sent with that identity (KVLoadPlan), if it has none
/// yet; anything else is stray (a duplicate, or an answer later than the identity's reuse).
public struct KVLedger: Sendable {
    public let plan: KVLoadPlan
    public private(set) var records: [KVRecord] = []
    /// Answers that matched no waiting request.
    public private(set) var stray = 0
    /// ERR answers (they name no key: counted, not matched).
    public private(set) var errors: [String] = []
    /// The last request id per identity, `socket * keys + key` (-1: none yet).
    private var current: [Int]

    public init(plan: KVLoadPlan) {
        self.plan = plan
        current = Array(repeating: -1, count: plan.sockets * plan.keys)
    }

    /// The record of request `id` (ids start at `plan.firstID`).
    public func record(_ id: Int) -> KVRecord { records[id - plan.firstID] }

    /// The id the next `sent(at:)` records (its message can be built before the send time is taken).
    public var nextID: Int { plan.firstID + records.count }

    /// Records the next request (id `plan.firstID + records.count`) as sent at `sentNs` and returns its id.
    public mutating func sent(at sentNs: UInt64) -> Int {
        let id = plan.firstID + records.count
        records.append(KVRecord(id: id, sentNs: sentNs))
        current[plan.socket(of: id) * plan.keys + plan.key(of: id)] = id
        return id
    }

    /// An answer (`bytes`) arrived on `socket`, read at `ns` (the kernel received it at
    /// `kernelNs`, if known); returns the id it answered, if any.
    @discardableResult
    public mutating func received(_ bytes: some Collection<UInt8>, socket: Int, at ns: UInt64, kernelNs: UInt64? = nil) -> Int? {
        guard (0..<plan.sockets).contains(socket), let (name, answer) = KVLoadPlan.parse(answer: bytes) else {
            stray += 1
            return nil
        }
        if case let .error(reason) = answer {
            if errors.count < 20 { errors.append(reason) }
            return nil
        }
        guard let key = plan.key(named: name) else { stray += 1; return nil }
        let id = current[socket * plan.keys + key]
        let expectsOK = plan.kind(of: max(id, 0)) == .set
        let isOK = answer == .ok
        guard id >= 0, records[id - plan.firstID].replyNs == nil, expectsOK == isOK else { stray += 1; return nil }
        records[id - plan.firstID].replyNs = ns
        records[id - plan.firstID].replyKernelNs = kernelNs
        records[id - plan.firstID].answer = answer
        return id
    }

    /// Requests still waiting for an answer that may yet come (sent within `reuseSeconds`).
    public func waiting(now: UInt64) -> Int {
        let window = UInt64(plan.reuseSeconds * 1e9)
        return records.reversed().prefix { now - min(now, $0.sentNs) < window }.filter { $0.replyNs == nil }.count
    }
}
