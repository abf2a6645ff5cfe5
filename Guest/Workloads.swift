// The built-in workloads (protocol.md §1.7).

/// Busy-wait timekeeping on the TSC.
struct Clock {
    /// Used when the host does not report the TSC frequency.
    static let fallbackKHz: UInt64 = 2_000_000

    let ticksPerMillisecond: UInt64

    init(pv: PVInterface) {
        ticksPerMillisecond = pv.present && pv.tscKHz != 0 ? pv.tscKHz : Self.fallbackKHz
    }

    var ticksPerSecond: UInt64 { ticksPerMillisecond &* 1000 }

    func now() -> UInt64 { CPU.readTSC() }

    func wait(until deadline: UInt64) {
        while now() < deadline { CPU.pause() }
    }
}

enum Workloads {
    /// Waits forever: PV SLEEP when the host offers it, else `pause`.
    static func idle(pv: PVInterface) -> Never {
        while true {
            if pv.present {
                pv.sleep(milliseconds: 100)
            } else {
                CPU.pause()
            }
        }
    }

    /// Prints "tick <i>" every `interval` ms, `count` times (0 = forever).
    static func ticks(count: UInt64, interval: UInt64, clock: Clock) {
        let step = interval &* clock.ticksPerMillisecond
        var deadline = clock.now()
        var tick: UInt64 = 0
        while count == 0 || tick < count {
            deadline &+= step
            clock.wait(until: deadline)
            var line = ConsoleLine("tick ")
            line.append(decimal: tick)
            line.emit()
            tick &+= 1
        }
    }

    static let pageSize: UInt64 = 4096
    static let wordsPerPage: UInt64 = 512
    static let workingSetAlignment: UInt64 = 2 << 20

    /// Writes every 8-byte word of a `mib` MiB working set above the image,
    /// `passes` times (0 = forever), at most `rate` pages/s (0 = unlimited).
    static func dirty(mib: UInt64, rate: UInt64, passes: UInt64, clock: Clock, startInfo: StartInfo) {
        let alignMask = workingSetAlignment - 1
        let base = (CPU.imageEnd &+ alignMask) & ~alignMask
        let size = mib << 20
        let end = base &+ size
        guard end > base, end <= CPU.mappedLimit,
              startInfo.ramContains(start: base, end: end) else {
            var line = ConsoleLine("pvguest: panic: dirty working set of ")
            line.append(decimal: mib)
            line.append(" MiB at ")
            line.append(hex: base)
            line.append(" does not fit in RAM")
            panic(line)
        }
        let pages = size / pageSize
        let firstPFN = base / pageSize

        // Rate limit: page deadlines spaced ticksPerSecond / rate apart, the
        // remainder carried so the long-run rate is exact.
        let limited = rate != 0
        let ticksPerPage = limited ? clock.ticksPerSecond / rate : 0
        let ticksRemainder = limited ? clock.ticksPerSecond % rate : 0
        var deadline = clock.now()
        var carried: UInt64 = 0

        var pass: UInt64 = 0
        while passes == 0 || pass < passes {
            var page: UInt64 = 0
            while page < pages {
                if limited {
                    deadline &+= ticksPerPage
                    carried &+= ticksRemainder
                    if carried >= rate {
                        carried &-= rate
                        deadline &+= 1
                    }
                    clock.wait(until: deadline)
                }
                writePage(pfn: firstPFN &+ page, pass: pass)
                page &+= 1
            }
            var line = ConsoleLine("pvguest: pass ")
            line.append(decimal: pass)
            line.append(" done: ")
            line.append(decimal: pages)
            line.append(" pages, ")
            line.append(decimal: pages &* wordsPerPage)
            line.append(" stores")
            line.emit()
            pass &+= 1
        }
    }

    /// Stores `(pfn << 20) ^ (pass << 9) ^ word` into each word of the page.
    @inline(__always)
    private static func writePage(pfn: UInt64, pass: UInt64) {
        // Sound: the page lies in RAM below the identity-mapped limit and above
        // the image (checked by `dirty`); nothing else uses that memory.
        guard let words = UnsafeMutablePointer<UInt64>(bitPattern: UInt(pfn &* pageSize)) else { return }
        let seed = (pfn << 20) ^ (pass << 9)
        var word: UInt64 = 0
        while word < wordsPerPage {
            words[Int(word)] = seed ^ word
            word &+= 1
        }
    }
}
