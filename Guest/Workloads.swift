// The simple workloads, idle and ticks (protocol.md §1.7), and the clock.
// dirty: DirtyWorkload.swift; balloon: Balloon.swift; chaos: Chaos.swift.

/// Busy-wait timekeeping on the TSC.
struct Clock {
    /// Used when the host does not report the TSC frequency.
    static let fallbackKHz: UInt64 = 2_000_000

    let ticksPerMillisecond: UInt64

    init(pv: PVInterface) {
        ticksPerMillisecond = pv.present && pv.tscKHz != 0 ? pv.tscKHz : Self.fallbackKHz
    }

    var ticksPerSecond: UInt64 { ticksPerMillisecond &* 1000 }

    @inline(__always) func now() -> UInt64 { CPU.readTSC() }

    func wait(until deadline: UInt64) {
        while now() < deadline { CPU.pause() }
    }
}

enum Workloads {
    /// Waits forever: PV SLEEP when the host offers it, else `pause`;
    /// answers self-check requests after each sleep.
    static func idle(_ kernel: Kernel) -> Never {
        let set = kernel.workingSet
        while true {
            if kernel.pv.present {
                kernel.pv.sleep(milliseconds: 100)
            } else {
                CPU.pause()
            }
            Selfcheck.poll(set, control: kernel.control)
        }
    }

    /// Prints "tick <i>" every `interval` ms, `count` times (0 = forever);
    /// answers self-check requests after each tick.
    static func ticks(_ kernel: Kernel) {
        let count = kernel.options.count
        let clock = kernel.clock
        let set = kernel.workingSet
        let step = kernel.options.interval &* clock.ticksPerMillisecond
        var deadline = clock.now()
        var tick: UInt64 = 0
        while count == 0 || tick < count {
            deadline &+= step
            clock.wait(until: deadline)
            var line = ConsoleLine("tick ")
            line.append(decimal: tick)
            line.emit()
            Selfcheck.poll(set, control: kernel.control)
            tick &+= 1
        }
    }
}
