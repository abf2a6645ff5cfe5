// The balloon (protocol.md §2.5): free RAM given back at boot, and the
// `balloon` workload that takes some back, writes it, returns it and checks
// that it reads as zero afterwards (§1.7).

/// Up to 32 descriptors in the control page, sent as one hypercall.
struct BalloonRequest {
    let control: ControlPage
    let pv: PVInterface
    let inflate: Bool
    private(set) var count = 0

    init(control: ControlPage, pv: PVInterface, inflate: Bool) {
        self.control = control
        self.pv = pv
        self.inflate = inflate
    }

    /// Adds one descriptor (sending the batch first if it is full).
    mutating func add(gpa: UInt64, pages: UInt64) {
        if count == ControlPage.balloonCapacity { send() }
        control.setBalloon(count, gpa: gpa, pages: pages)
        count += 1
    }

    /// Sends the descriptors added so far (nothing if there are none).
    mutating func send() {
        guard count > 0 else { return }
        control.setBalloonCount(UInt32(count))
        if inflate {
            pv.balloonInflate(count: UInt32(count))
        } else {
            pv.balloonDeflate(count: UInt32(count))
        }
        count = 0
    }
}

enum Balloon {
    /// Gives the host all RAM above the working set (and any RAM above
    /// 4 GiB); prints "pvguest: balloon <N> MiB free".
    static func inflateAtBoot(_ kernel: Kernel) {
        var request = BalloonRequest(control: kernel.control, pv: kernel.pv, inflate: true)
        var bytes: UInt64 = 0
        kernel.layout.forEachFreeRange(startInfo: kernel.startInfo) { start, end in
            request.add(gpa: start, pages: (end - start) / Layout.pageSize)
            bytes &+= end - start
        }
        request.send()
        var line = ConsoleLine("pvguest: balloon ")
        line.append(decimal: bytes >> 20)
        line.append(" MiB free")
        line.emit()
    }

    /// One range, one hypercall.
    static func apply(_ kernel: Kernel, inflate: Bool, gpa: UInt64, pages: UInt64) {
        var request = BalloonRequest(control: kernel.control, pv: kernel.pv, inflate: inflate)
        request.add(gpa: gpa, pages: pages)
        request.send()
    }

    /// The first `bytes` of ballooned RAM the guest can address, or nil.
    static func findRange(_ kernel: Kernel, bytes: UInt64) -> UInt64? {
        var found: UInt64? = nil
        kernel.layout.forEachFreeRange(startInfo: kernel.startInfo) { start, end in
            let usable = end < CPU.mappedLimit ? end : CPU.mappedLimit
            if found == nil && start < usable && usable - start >= bytes { found = start }
        }
        return found
    }

    /// `workload=balloon mib=M`: deflate M MiB, write it, inflate it, deflate
    /// it again and check that it reads as zero.
    static func workload(_ kernel: Kernel) {
        guard kernel.registered else {
            Console.log("balloon: no pv interface, nothing to do")
            return
        }
        let mib = kernel.options.mib
        let bytes = mib << 20
        guard let start = findRange(kernel, bytes: bytes) else {
            var line = ConsoleLine("pvguest: panic: balloon: no ballooned range of ")
            line.append(decimal: mib)
            line.append(" MiB")
            panic(line)
        }
        let pages = bytes / Layout.pageSize
        let set = kernel.workingSet

        apply(kernel, inflate: false, gpa: start, pages: pages)
        touch(kernel, gpa: start, pages: pages)
        report("pvguest: balloon touched ", mib, " MiB")
        kernel.pv.sleep(milliseconds: 500)
        Selfcheck.poll(set, control: kernel.control)

        apply(kernel, inflate: true, gpa: start, pages: pages)
        report("pvguest: balloon released ", mib, " MiB")
        kernel.pv.sleep(milliseconds: 500)
        Selfcheck.poll(set, control: kernel.control)

        apply(kernel, inflate: false, gpa: start, pages: pages)
        let nonzero = countNonzeroWords(gpa: start, pages: pages)
        if nonzero == 0 {
            Console.log("balloon zero check ok")
        } else {
            report("pvguest: balloon zero check failed ", nonzero, " words")
        }
    }

    /// Writes every word of the range (non-zero values), logging each page.
    private static func touch(_ kernel: Kernel, gpa: UInt64, pages: UInt64) {
        var log = kernel.makeDirtyLog()
        var total = kernel.control.pagesWritten
        var page: UInt64 = 0
        while page < pages {
            let pfn = gpa / Layout.pageSize &+ page
            // Sound: findRange returned identity-mapped RAM outside everything else.
            let words = UnsafeMutablePointer<UInt64>(bitPattern: UInt(pfn &* Layout.pageSize))!
            log.begin(pfn)
            var index = 0
            while index < Stamp.wordsPerPage {
                words[index] = (pfn &<< 12) | UInt64(index &* 8) | 1
                index += 1
            }
            log.end(pfn)
            total &+= 1
            kernel.control.pagesWritten = total
            page &+= 1
        }
    }

    private static func countNonzeroWords(gpa: UInt64, pages: UInt64) -> UInt64 {
        // Sound: as in touch.
        let words = UnsafePointer<UInt64>(bitPattern: UInt(gpa))!
        let count = Int(pages &* UInt64(Stamp.wordsPerPage))
        var nonzero: UInt64 = 0
        var index = 0
        while index < count {
            if words[index] != 0 { nonzero &+= 1 }
            index += 1
        }
        return nonzero
    }

    private static func report(_ prefix: StaticString, _ value: UInt64, _ suffix: StaticString) {
        var line = ConsoleLine(prefix)
        line.append(decimal: value)
        line.append(suffix)
        line.emit()
    }
}
