/// The digest of a STATE blob that COMMIT carries (protocol.md §3.6.2): a 64-bit mix over
/// the bytes and their length. Not cryptographic (TLS protects against malice); it detects
/// corruption — and any change confined to one 8-byte word, a flipped bit in particular,
/// always: every step of the loop is a bijection of the running value.
public enum StateDigest {
    static let prime: UInt64 = 0x100000001b3

    public static func compute(_ bytes: [UInt8]) -> UInt64 {
        var h = UInt64(bytes.count) ^ 0x9e3779b97f4a7c15
        var index = 0
        while index < bytes.count {
            var word: UInt64 = 0
            for k in 0..<min(8, bytes.count - index) { word |= UInt64(bytes[index + k]) << (8 * k) }
            h = (h ^ word) &* prime
            h ^= h >> 29
            index += 8
        }
        h ^= h >> 32
        h = h &* prime
        h ^= h >> 29
        return h
    }
}
