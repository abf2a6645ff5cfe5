import Foundation
import Testing

@testable import Migrate

@Suite("CPU meter")
struct CPUMeterTests {
    /// The calling thread's CPU time from another clock than the meter's (clock_gettime).
    private static func threadClock() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    private static func spin(cpuSeconds: Double) {
        let start = threadClock()
        while threadClock() - start < cpuSeconds {}
    }

    @Test("counts the CPU of the measured thread, not of the rest of the process")
    func countsOnlyMeasuredThreads() {
        let meter = CPUMeter()
        // Another thread of this process burns CPU at the same time, unmeasured.
        let outsiderSpinning = DispatchSemaphore(value: 0), outsiderDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            outsiderSpinning.signal()
            Self.spin(cpuSeconds: 0.3)
            outsiderDone.signal()
        }
        outsiderSpinning.wait()
        meter.measure { Self.spin(cpuSeconds: 0.05) }
        outsiderDone.wait()
        #expect(meter.seconds >= 0.045 && meter.seconds < 0.09,
                "measured a thread that spun 0.05 CPU-s while another spun 0.3: \(meter.seconds) s")
        // A second measured thread adds its own time.
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            meter.measure { Self.spin(cpuSeconds: 0.05) }
            done.signal()
        }
        done.wait()
        #expect(meter.seconds >= 0.095 && meter.seconds < 0.14, "two threads of 0.05 CPU-s each: \(meter.seconds) s")
    }
}
