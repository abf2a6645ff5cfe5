// The `dirty` workload (protocol.md §1.7): page writes over a working set of
// `mib` MiB, with stamps (§2.9), dirty logging (§2.3), the host's throttle
// (§2.7), progress lines and counters (§2.6), and a self-check at the end.

/// Chooses the page of each write.
struct PagePicker {
    let pattern: Pattern
    let pages: UInt64
    let hotPages: UInt64
    let hotPercent: UInt64
    private var random: Random

    init(options: BootOptions, pages: UInt64) {
        pattern = options.pattern
        self.pages = pages
        let hot = pages &* options.hot / 100
        hotPages = hot == 0 ? 1 : hot
        hotPercent = options.hotPercent
        random = Random(seed: options.seed, stream: 1)
    }

    /// The page of write `k` of a pass.
    @inline(__always)
    mutating func next(_ k: UInt64) -> UInt64 {
        switch pattern {
        case .sequential:
            return k
        case .random:
            return random.below(pages)
        case .hotspot:
            let coin = ((random.next() >> 32) &* 100) >> 32  // 0..<100
            if coin < hotPercent || hotPages >= pages {
                return random.below(hotPages)
            }
            return hotPages &+ random.below(pages &- hotPages)
        }
    }
}

/// Rate limiting (`rate` and the host's throttle_rate: the lower non-zero
/// one wins), the control page's `rate` counter and the progress lines.
struct Pacer {
    /// Without a limit, look at the clock every this many pages.
    static let uncheckedPages = 64
    /// Backlog a limited writer may catch up on after a stall.
    static let slackMilliseconds: UInt64 = 100

    let clock: Clock
    let control: ControlPage
    let pv: PVInterface
    let optionRate: UInt64
    let progressTicks: UInt64
    private var deadline: UInt64
    private var countdown = 0
    private var secondStart: UInt64
    private var secondStartTotal: UInt64 = 0
    private var progressStart: UInt64
    private var progressStartTotal: UInt64 = 0

    init(kernel: Kernel) {
        clock = kernel.clock
        control = kernel.control
        pv = kernel.pv
        optionRate = kernel.options.rate
        // Only vCPU 0 prints (the console line buffer is shared).
        progressTicks = kernel.vcpu == 0 ? kernel.options.progress &* kernel.clock.ticksPerMillisecond : 0
        let now = clock.now()
        deadline = now
        secondStart = now
        progressStart = now
    }

    /// Called before each page write; `total` = pages written so far.
    @inline(__always)
    mutating func pace(total: UInt64) {
        let throttle = UInt64(control.throttleRate)
        var limit = optionRate
        if throttle != 0 && (limit == 0 || throttle < limit) { limit = throttle }
        if limit != 0 {
            wait(limit: limit, total: total)
        } else {
            countdown -= 1
            if countdown <= 0 {
                countdown = Self.uncheckedPages
                periodic(now: clock.now(), total: total)
            }
        }
    }

    /// Waits for this page's slot at `limit` pages/s: spinning, or PV SLEEP
    /// for waits of 2 ms and more (exits must stay rare).
    @inline(never)
    private mutating func wait(limit: UInt64, total: UInt64) {
        let perMillisecond = clock.ticksPerMillisecond
        var now = clock.now()
        deadline &+= clock.ticksPerSecond / limit
        let slack = Self.slackMilliseconds &* perMillisecond
        if now > slack && deadline < now &- slack { deadline = now }
        while now < deadline {
            let remaining = deadline &- now
            if pv.present && remaining >= 2 &* perMillisecond {
                pv.sleep(milliseconds: UInt32(truncatingIfNeeded: min(remaining / perMillisecond &- 1, 0xf_ffff)))
            } else {
                CPU.pause()
            }
            now = clock.now()
        }
        periodic(now: now, total: total)
    }

    @inline(never)
    private mutating func periodic(now: UInt64, total: UInt64) {
        let perMillisecond = clock.ticksPerMillisecond
        if now &- secondStart >= clock.ticksPerSecond {
            control.setRate(Self.perSecond(total &- secondStartTotal, ticks: now &- secondStart, perMillisecond))
            secondStart = now
            secondStartTotal = total
        }
        if progressTicks != 0 && now &- progressStart >= progressTicks {
            var line = ConsoleLine("pvguest: progress ")
            line.append(decimal: Self.perSecond(total &- progressStartTotal, ticks: now &- progressStart,
                                                perMillisecond))
            line.append(" pages/s, ")
            line.append(decimal: total)
            line.append(" written")
            line.emit()
            progressStart = now
            progressStartTotal = total
        }
    }

    private static func perSecond(_ pages: UInt64, ticks: UInt64, _ perMillisecond: UInt64) -> UInt64 {
        let milliseconds = ticks / perMillisecond
        return milliseconds == 0 ? 0 : pages &* 1000 / milliseconds
    }
}

enum DirtyWorkload {
    static func run(_ kernel: Kernel) {
        let options = kernel.options
        let control = kernel.control
        let set = kernel.share       // the pages this vCPU writes
        let whole = kernel.workingSet  // what a self-check reads
        let smp = SMP.current
        let writer = PageWriter(set: set, content: options.content, changeBytes: options.change, seed: options.seed)
        var log = kernel.makeDirtyLog()
        var picker = PagePicker(options: options, pages: set.pages)
        var pacer = Pacer(kernel: kernel)
        var total = control.pagesWritten

        var pass: UInt64 = 0
        while options.passes == 0 || pass < options.passes {
            var k: UInt64 = 0
            while k < set.pages {
                pacer.pace(total: total)
                writer.write(picker.next(k), log: &log)
                total &+= 1
                control.pagesWritten = total
                if kernel.vcpu == 0 { Selfcheck.poll(whole, control: control) } else { smp.parkIfAsked(kernel.vcpu) }
                k &+= 1
            }
            pass &+= 1
            control.setPasses(pass)
            if kernel.vcpu != 0 { continue }
            var line = ConsoleLine("pvguest: pass ")
            line.append(decimal: pass &- 1)
            line.append(" done: ")
            line.append(decimal: set.pages)
            line.append(" pages, ")
            line.append(decimal: set.pages &* writer.storesPerWrite)
            line.append(" stores")
            line.emit()
        }
        if options.selfcheck && kernel.vcpu == 0 {
            smp.waitForOthersFinished()
            Selfcheck.run(whole, control: control)
        }
    }
}
