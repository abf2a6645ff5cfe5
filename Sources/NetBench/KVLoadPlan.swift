// The request generator's plan and its messages (docs/protocol.md §5.7): which request goes
// on which socket with which key, what each SET writes, and how an answer is read back.
// Pure: no sockets, no clock (the tests check it without KVM or a network).

/// A request's kind. The kind follows from the socket (even sockets SET, odd ones GET), so an
/// answer's verb always agrees with the socket it arrives on.
public enum KVKind: String, Codable, Sendable {
    case set, get
}

/// One answer of the guest's store, parsed (§5.7's table).
public enum KVAnswer: Equatable, Codable, Sendable {
    case ok
    case value(String)
    case notFound
    case error(String)
}

/// The fixed-rate load: request `n` goes out at `n / rate` seconds on socket `n mod sockets`
/// with key `(n / sockets) mod keys`. The store answers by key only (no request ids, §5.7), so
/// a request is identified by (socket, key): the same pair comes back only after
/// `sockets × keys` requests (`reuseSeconds`), and an answer later than that cannot be told
/// from the next request's — it counts as lost. The store holds 512 keys, so keys are reused
/// (each SET writes a value unique to its request id); `keys` stays below 512 to leave room.
public struct KVLoadPlan: Codable, Sendable, Equatable {
    public var rate: Double
    public var sockets: Int
    public var keys: Int
    /// Bytes of each SET's value (its id, then padding), 16–200.
    public var valueBytes: Int
    /// The first request's id. Several loads against one guest continue each other's ids, so a
    /// value names the one SET that wrote it, and one a load finds from an earlier load (id
    /// below `firstID`) is told apart from its own.
    public var firstID: Int

    public init(rate: Double = 2000, sockets: Int = 32, keys: Int = 400, valueBytes: Int = 48, firstID: Int = 0) {
        self.rate = rate; self.sockets = sockets; self.keys = keys; self.valueBytes = valueBytes; self.firstID = firstID
    }

    /// Nil when the plan is usable, else what is wrong.
    public var problem: String? {
        if !(rate >= 1 && rate <= 100_000) { return "the request rate must be 1–100000 per second" }
        if !(2...256).contains(sockets) || sockets % 2 != 0 { return "sockets must be an even number 2–256" }
        if !(1...500).contains(keys) { return "keys must be 1–500 (the guest's store holds 512)" }
        if !(16...200).contains(valueBytes) { return "value bytes must be 16–200" }
        return nil
    }

    /// How long an identity (socket, key) stays with one request.
    public var reuseSeconds: Double { Double(sockets * keys) / rate }

    public func socket(of id: Int) -> Int { id % sockets }
    public func key(of id: Int) -> Int { (id / sockets) % keys }
    public func kind(of id: Int) -> KVKind { socket(of: id) % 2 == 0 ? .set : .get }

    public static func keyName(_ key: Int) -> String { "nb\(key)" }

    /// The key index a key name stands for, or nil for a name this plan never sends.
    public func key(named name: Substring) -> Int? {
        guard name.hasPrefix("nb"), let k = Int(name.dropFirst(2)), (0..<keys).contains(k),
              Self.keyName(k) == name else { return nil }
        return k
    }

    /// The value SET `id` writes: "v<id>-" then "x" up to `valueBytes`.
    public func value(of id: Int) -> String {
        let head = "v\(id)-"
        return head + String(repeating: "x", count: max(0, valueBytes - head.utf8.count))
    }

    /// The SET id a stored value came from, or nil if no SET of this plan wrote exactly it.
    public func setID(of value: String) -> Int? {
        guard value.hasPrefix("v"), let dash = value.firstIndex(of: "-"),
              let id = Int(value[value.index(after: value.startIndex)..<dash]), id >= 0,
              kind(of: id) == .set, self.value(of: id) == value else { return nil }
        return id
    }

    /// The datagram of request `id`.
    public func message(_ id: Int) -> String {
        let name = Self.keyName(key(of: id))
        switch kind(of: id) {
        case .set: return "SET \(name) \(value(of: id))"
        case .get: return "GET \(name)"
        }
    }

    /// Reads one answer: its key name and what it says; nil for bytes that are no answer of §5.7.
    public static func parse(answer bytes: some Collection<UInt8>) -> (key: Substring, answer: KVAnswer)? {
        guard bytes.count <= 512, let text = String(validating: Array(bytes), as: UTF8.self) else { return nil }
        let words = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard words.count >= 2, !words[1].isEmpty else { return nil }
        switch (words[0], words.count) {
        case ("OK", 2): return (words[1], .ok)
        case ("NOTFOUND", 2): return (words[1], .notFound)
        case ("VALUE", 3): return (words[1], .value(String(words[2])))
        case ("ERR", _): return ("", .error(String(text.dropFirst(4))))
        default: return nil
        }
    }
}
