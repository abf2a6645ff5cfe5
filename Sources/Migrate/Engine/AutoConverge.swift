// When pre-copy slows the guest down (auto-converge) and to what rate. The throttle itself is
// the PV rate limit of protocol.md §2.7, or the vCPU duty cycle for guests without PV.

/// The rule pre-copy applies after every round that did not converge.
///
/// The guest loses the race when it dirties more than `share` of what the sender moves —
/// counted in bytes on the link **and** in pages through the sender itself (encoding,
/// encryption, the harvest: its CPU), whichever is tighter. Counting only the link missed
/// the common case of a CPU-bound sender on a fast link: XOR deltas make a re-sent page
/// ~10 bytes on the wire, so a guest rewriting its whole working set every round looked
/// like a trickle to the link and was never throttled (measured: 100 rounds over 300 s,
/// throttle 0, a 16 MiB set on a loaded 2-core host).
enum AutoConverge {
    /// The share of the sender's rate the guest may dirty before it is throttled.
    static let share = 0.7

    /// Whether the guest dirtied faster than pre-copy can drain it.
    /// - dirtyRate: pages dirtied per second during the round.
    /// - sentRate: pages the round sent per second (0: unknown).
    /// - bytesPerPage: wire bytes per page sent; bandwidth: the link's bytes per second.
    static func losing(dirtyRate: Double, sentRate: Double, bytesPerPage: Double, bandwidth: Double) -> Bool {
        let drain = drainRate(sentRate: sentRate, bytesPerPage: bytesPerPage, bandwidth: bandwidth)
        return drain > 0 && dirtyRate > share * drain
    }

    /// Pages per second pre-copy can drain: the slower of the link and the sender (0: neither known).
    static func drainRate(sentRate: Double, bytesPerPage: Double, bandwidth: Double) -> Double {
        let link = bytesPerPage > 0 && bandwidth > 0 ? bandwidth / bytesPerPage : .infinity
        let sender = sentRate > 0 ? sentRate : .infinity
        let rate = min(link, sender)
        return rate.isFinite ? rate : 0
    }
}
