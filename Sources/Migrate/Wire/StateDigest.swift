/// The digest of a STATE blob that COMMIT carries (protocol.md §3.6.2): a 64-bit mix over
/// the bytes and their length. Not cryptographic (TLS protects against malice); it detects
/// corruption — and any change confined to one 8-byte word, a flipped bit in particular,
/// always: every step of the loop is a bijection of the running value.
public enum StateDigest {
    static let prime: UInt64 = 0x100000001b3

    /// Whole words are loaded as words (one unaligned load each; the state holds the balloon
    /// map, 288 KiB at 9 GiB, digested while the guest is paused), the tail byte by byte.
    public static func compute(_ bytes: [UInt8]) -> UInt64 {
        var h = UInt64(bytes.count) ^ 0x9e3779b97f4a7c15
        let whole = bytes.count / 8
        bytes.withUnsafeBytes { raw in
            for w in 0..<whole {
                // Sound: 8 × w + 8 ≤ bytes.count, and any bit pattern is a UInt64.
                h = (h ^ UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * w, as: UInt64.self))) &* prime
                h ^= h >> 29
            }
        }
        if bytes.count > 8 * whole {
            var word: UInt64 = 0
            for k in 0..<(bytes.count - 8 * whole) { word |= UInt64(bytes[8 * whole + k]) << (8 * k) }
            h = (h ^ word) &* prime
            h ^= h >> 29
        }
        h ^= h >> 32
        h = h &* prime
        h ^= h >> 29
        return h
    }
}
