@testable import Core
import Testing

/// `PVMIGRATE_NET_TRACE`'s follower of one request at a time (benchmarks.md's breakdown of the
/// NIC round trip): only complete requests, stamped in order, count.
@Suite struct NetTraceTests {
    @Test func onlyARequestStampedInOrderCounts() {
        #expect(NetTrace.summary() == nil)
        NetTrace.mark(.delivered) // no request open: ignored
        NetTrace.mark(.tapReadable)
        NetTrace.mark(.runEntered) // its predecessor is missing: ignored
        NetTrace.mark(.tapWritten)
        #expect(NetTrace.summary() == nil, "an incomplete request was counted")
        for stage in NetTrace.Stage.allCases { NetTrace.mark(stage) }
        NetTrace.mark(.runEntered) // a second KVM_RUN of the same request is not a new stage
        let summary = NetTrace.summary()
        #expect(summary?.hasPrefix("NIC trace, medians over 1 requests: TAP readable → delivered ") == true, "\(summary ?? "nil")")
    }
}
