import Foundation
import Testing

@testable import Core

@Suite("latency slice")
struct LatencySliceTests {
    /// Runs `body` on a thread of its own (the slice belongs to the calling thread; the test
    /// runner's threads keep theirs) and returns its result.
    private func onOwnThread<R: Sendable>(_ body: @escaping @Sendable () -> R) -> R {
        let result = Locked<R?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            result.withLock { $0 = body() }
            done.signal()
        }
        thread.start()
        done.wait()
        return result.value!
    }

    @Test("a thread's slice is the short one while a LatencySlice is active, and the default again after end()")
    func shortWhileActiveDefaultAfter() {
        let (before, active, during, after, afterSecondEnd) = onOwnThread { () -> (UInt64?, Bool, UInt64?, UInt64?, UInt64?) in
            let before = LatencySlice.current
            let slice = LatencySlice()
            let during = LatencySlice.current
            let active = slice.isActive
            slice.end()
            let after = LatencySlice.current
            slice.end() // a second end changes nothing
            return (before, active, during, after, LatencySlice.current)
        }
        guard active else {
            // A kernel without custom slices (before Linux 6.12): nothing may have changed.
            print("LatencySliceTests: this kernel has no custom time slices (sched_setattr refused one); checking that nothing changed")
            #expect(during == before && after == before)
            return
        }
        #expect(during == LatencySlice.nanoseconds)
        #expect(before != nil && before! > LatencySlice.nanoseconds, "the default slice is longer than 0.1 ms")
        #expect(after == before)
        #expect(afterSecondEnd == before)
    }

    @Test("a slice set on one thread leaves the others' alone")
    func otherThreadsKeepTheirs() {
        let slice = onOwnThread { () -> (UInt64?, Bool) in
            let s = LatencySlice() // never ended: the thread ends with it
            return (LatencySlice.current, s.isActive)
        }
        let mine = onOwnThread { LatencySlice.current }
        if slice.1 { #expect(slice.0 == LatencySlice.nanoseconds) }
        #expect(mine != LatencySlice.nanoseconds)
    }
}
