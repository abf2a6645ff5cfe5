// The `chaos` workload (protocol.md §1.7, §2.8): every kind of invalid
// hypercall, ring and balloon value, in a fixed order so that the host can
// assert exact rejection counts:
//
//   unknownOperation 1, badArgument 4, notRegistered 2, badControlArea 2,
//   reRegistration 1, badBalloonRange 5, badConsoleLength 2, badRingEntry 2,
//   badRingIndex 1
//
// Every step leaves the guest running; it ends with "pvguest: chaos done".

enum Chaos {
    static func run(_ kernel: inout Kernel) {
        let pv = kernel.pv
        guard pv.present else {
            Console.log("chaos: no pv interface, nothing to do")
            return
        }
        let layout = kernel.layout
        let control = kernel.control
        let ramEndPFN = layout.ramEnd / Layout.pageSize

        // a. An 8-bit write to the PV port: badArgument.
        CPU.outb(pv.port, 0x01)
        // b. Unknown operation 0xabc: unknownOperation.
        pv.perform(0xabc, 0)
        // c. SLEEP(0): badArgument.
        pv.perform(PVInterface.opSleep, 0)
        // d. RING_FULL and BALLOON_INFLATE(1) before REGISTER: notRegistered ×2.
        pv.ringFull()
        pv.balloonInflate(count: 1)
        // e. REGISTER of a page beyond RAM: badControlArea.
        pv.register(controlPagePFN: pfnOutsideRAM(kernel, ramEndPFN: ramEndPFN))
        // f. REGISTER of a control page with a wrong magic: badControlArea.
        control.setMagic(~ControlPage.magic)
        pv.register(controlPagePFN: layout.controlPagePFN)
        control.setMagic(ControlPage.magic)
        // g. The proper REGISTER: accepted (from here on the console is PV).
        guard kernel.register() else { panic("chaos: the host refused a valid REGISTER") }
        // h. REGISTER again: reRegistration.
        pv.register(controlPagePFN: layout.controlPagePFN)
        // i. BALLOON_INFLATE(0) and BALLOON_INFLATE(33): badArgument ×2.
        pv.balloonInflate(count: 0)
        pv.balloonInflate(count: UInt32(ControlPage.balloonCapacity + 1))
        // j. Five bad balloon descriptors: badBalloonRange ×5.
        let free = layout.workingSetEnd
        control.setBalloon(0, gpa: free &+ 0x800, pages: 1)                // unaligned
        control.setBalloon(1, gpa: free, pages: 0)                         // empty
        control.setBalloon(2, gpa: layout.ramEnd, pages: 16)               // beyond RAM
        control.setBalloon(3, gpa: 0xffff_ffff_ffff_f000, pages: 16)       // overflows
        control.setBalloon(4, gpa: layout.controlPage, pages: 1)           // the control page
        control.setBalloonCount(5)
        pv.balloonInflate(count: 5)
        // k. CONSOLE(0) and CONSOLE(2000): badConsoleLength ×2.
        pv.console(count: 0)
        pv.console(count: 2000)
        // l. Two bad ring entries, then RING_FULL: badRingEntry ×2.
        var log = kernel.makeDirtyLog()
        log.append(ramEndPFN &+ 1)                             // outside RAM
        log.append(layout.controlPagePFN | (1 << 60))          // reserved bits set
        pv.ringFull()
        // m. A head more than a ring ahead of the tail, then RING_FULL:
        //    badRingIndex (the host resynchronises tail = head).
        control.ringHead = control.ringTail &+ Layout.ringEntries &+ 5
        pv.ringFull()
        // n. Still running.
        Console.log("chaos done")
    }

    /// A page frame below 4 GiB (REGISTER's argument has 20 bits) that is not
    /// RAM: just past the end of RAM, or the top of the 32-bit hole.
    private static func pfnOutsideRAM(_ kernel: Kernel, ramEndPFN: UInt64) -> UInt64 {
        let candidate = ramEndPFN &+ 10
        return candidate <= Layout.maximumControlPFN ? candidate : Layout.maximumControlPFN
    }
}
