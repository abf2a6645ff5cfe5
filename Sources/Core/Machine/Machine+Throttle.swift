import Foundation

/// vCPU throttling for guests that cannot slow themselves down (not PV-aware): the VM is
/// paused for `fraction` of every 20 ms period — the counterpart of QEMU's auto-converge.
/// PV guests are asked instead (`PVInterface.setThrottle`), which costs them less.
extension Machine {
    static let throttlePeriod = 0.020

    /// 0 stops throttling and returns only once the throttle thread is gone, so a caller
    /// can pause the VM itself right after without the throttle resuming it. Values are
    /// clamped to 0…0.95.
    public func setCPUThrottle(_ fraction: Double) {
        let f = min(max(fraction, 0), 0.95)
        let start = throttle.withLock { state -> Bool in
            state.fraction = f
            guard f > 0, !state.running else { return false }
            state.running = true
            return true
        }
        if start {
            Thread.detachNewThread { [self] in
                while true {
                    let f = throttle.value.fraction
                    guard f > 0, exit == nil else { break }
                    withVCPUsPaused { Thread.sleep(forTimeInterval: Self.throttlePeriod * f) }
                    Thread.sleep(forTimeInterval: Self.throttlePeriod * (1 - f))
                }
                throttle.withLock { $0.running = false }
            }
        }
        while f == 0, throttle.value.running { Thread.sleep(forTimeInterval: 0.001) }
    }

    public var cpuThrottle: Double { throttle.value.fraction }
}

struct ThrottleState: Sendable {
    var fraction = 0.0
    var running = false
}
