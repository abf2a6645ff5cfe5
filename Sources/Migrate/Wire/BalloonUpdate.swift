import Core

/// The BALLOON frame (capability `BALLOON_MAP`, protocol.md §3.2.1): the balloon map sent
/// ahead of the pause as changes to what the destination already has, so that STATE, sent in
/// the pause, no longer carries a map that grows with the guest (288 KiB at 9 GiB).
///
/// Payload: `u8 final, u8 0, u16 0, u32 run_count, u64 map_digest`, then `run_count` ×
/// `{ u32 first_word, u32 word_count, word_count × u64 word }`. `decoding` checks the layout
/// only; the map's size is the receiver's to check (`BalloonMapReceiver`).
public struct BalloonUpdate: Equatable, Sendable {
    /// Consecutive words of the map, starting at `firstWord`, that replace the receiver's.
    public struct Run: Equatable, Sendable {
        public var firstWord: UInt32
        public var words: [UInt64]
        public init(firstWord: UInt32, words: [UInt64]) { self.firstWord = firstWord; self.words = words }
    }

    /// Sent in the pause: the map is now the source's at the pause; no BALLOON follows.
    public var isFinal: Bool
    /// `BalloonMapDigest` of the whole map after this update.
    public var mapDigest: UInt64
    public var runs: [Run]

    static let headerSize = 16

    public init(isFinal: Bool, mapDigest: UInt64, runs: [Run]) {
        self.isFinal = isFinal; self.mapDigest = mapDigest; self.runs = runs
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Self.headerSize + runs.reduce(0) { $0 + 8 + 8 * $1.words.count })
        w.u8(isFinal ? 1 : 0); w.u8(0); w.u16(0)
        w.u32(UInt32(runs.count)); w.u64(mapDigest)
        for run in runs {
            w.u32(run.firstWord); w.u32(UInt32(run.words.count)); w.u64s(run.words)
        }
        return w.bytes
    }

    /// Exact: runs non-empty, in increasing order and not overlapping, no trailing bytes.
    public init(decoding payload: [UInt8]) throws(WireError) {
        func bad(_ why: String) -> WireError { .malformed(type: "BALLOON", reason: why) }
        var r = ByteReader(payload)
        guard let final = r.u8(), let zero8 = r.u8(), let zero16 = r.u16(), let count = r.u32(), let digest = r.u64() else {
            throw bad("\(payload.count) bytes, shorter than its 16-byte header")
        }
        guard final <= 1 else { throw bad("final flag \(final)") }
        guard zero8 == 0, zero16 == 0 else { throw .reservedNotZero("BALLOON") }
        var runs: [Run] = []
        var next: UInt64 = 0 // the first word the next run may start at
        for _ in 0..<count {
            guard let first = r.u32(), let n = r.u32() else { throw bad("cut short in run \(runs.count)") }
            guard n >= 1 else { throw bad("run \(runs.count) is empty") }
            guard UInt64(first) >= next else { throw bad("run \(runs.count) at word \(first) is out of order or overlaps") }
            guard let words = r.u64s(Int(n)) else { throw bad("run \(runs.count) is cut short") }
            runs.append(Run(firstWord: first, words: words))
            next = UInt64(first) + UInt64(n)
        }
        guard r.remaining == 0 else { throw bad("\(r.remaining) trailing bytes") }
        isFinal = final == 1; mapDigest = digest; self.runs = runs
    }
}

/// The digest of a balloon map (protocol.md §3.2.1): the sum, mod 2⁶⁴, of one term per
/// word, `term(i, 0) = 0`. A sum can be kept up to date word by word, so neither end reads
/// the whole map to check an update; each term is a bijection of the word for a given
/// index, so a change confined to one word always changes the digest.
public enum BalloonMapDigest {
    /// `mix(w ⊕ k) − mix(k)` with `k = mix(i + 0x9e3779b97f4a7c15)`.
    @inlinable public static func term(_ index: Int, _ word: UInt64) -> UInt64 {
        let k = mix(UInt64(index) &+ 0x9e37_79b9_7f4a_7c15)
        return mix(word ^ k) &- mix(k)
    }

    public static func compute(_ words: [UInt64]) -> UInt64 {
        var sum: UInt64 = 0
        for (i, w) in words.enumerated() where w != 0 { sum &+= term(i, w) }
        return sum
    }

    /// SplitMix64's finalizer: a bijection of the 64-bit word.
    @inlinable static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
