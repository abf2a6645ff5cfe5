import Testing

@testable import Migrate

/// When pre-copy throttles the guest (`AutoConverge`): a guest that outruns either the link
/// or the sender itself is throttled; one that leaves both room is not.
@Suite("auto-converge")
struct AutoConvergeTests {
    @Test func aGuestOutrunningTheLinkIsThrottled() {
        // 4 KiB pages on a 100 MB/s link drain ~24,400 pages/s; the sender could do 200,000.
        #expect(AutoConverge.losing(dirtyRate: 20_000, sentRate: 200_000, bytesPerPage: 4096, bandwidth: 100e6))
        #expect(!AutoConverge.losing(dirtyRate: 10_000, sentRate: 200_000, bytesPerPage: 4096, bandwidth: 100e6))
    }

    /// The case the link alone missed: deltas make pages ~10 bytes on the wire, so the link
    /// looks idle while the sender's CPU is the bottleneck (4,100 pages/s sent, 3,500 dirtied).
    @Test func aGuestOutrunningACPUBoundSenderIsThrottled() {
        #expect(AutoConverge.losing(dirtyRate: 3_500, sentRate: 4_100, bytesPerPage: 10, bandwidth: 100e6))
        #expect(AutoConverge.drainRate(sentRate: 4_100, bytesPerPage: 10, bandwidth: 100e6) == 4_100)
        #expect(!AutoConverge.losing(dirtyRate: 2_000, sentRate: 4_100, bytesPerPage: 10, bandwidth: 100e6))
    }

    @Test func withNothingMeasuredNothingIsThrottled() {
        #expect(AutoConverge.drainRate(sentRate: 0, bytesPerPage: 4096, bandwidth: 0) == 0)
        #expect(!AutoConverge.losing(dirtyRate: 1e9, sentRate: 0, bytesPerPage: 4096, bandwidth: 0))
        // One of the two known is enough.
        #expect(AutoConverge.losing(dirtyRate: 1_000, sentRate: 1_000, bytesPerPage: 4096, bandwidth: 0))
        #expect(AutoConverge.losing(dirtyRate: 30_000, sentRate: 0, bytesPerPage: 4096, bandwidth: 100e6))
    }
}
