// Pseudo-random numbers for the workloads: fast, deterministic from `seed`,
// integer-only (no SSE), no state outside the values themselves.

/// splitmix64's finalizer: turns any 64-bit value into a well-mixed one.
@inline(__always)
func mix64(_ value: UInt64) -> UInt64 {
    var z = value &+ 0x9e37_79b9_7f4a_7c15
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
}

/// xorshift64*: one multiply per 64 bits, output incompressible for any
/// general-purpose compressor.
struct Random {
    private var state: UInt64

    /// Streams with different `stream` values are independent for one seed.
    init(seed: UInt64, stream: UInt64 = 0) {
        let mixed = mix64(seed ^ mix64(stream))
        state = mixed != 0 ? mixed : 0x2545_f491_4f6c_dd1d
    }

    @inline(__always)
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_f491_4f6c_dd1d
    }

    /// Uniform in `0..<bound` (0 when `bound` is 0), without a division.
    @inline(__always)
    mutating func below(_ bound: UInt64) -> UInt64 {
        next().multipliedFullWidth(by: bound).high
    }
}
