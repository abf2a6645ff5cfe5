// The `chaos` workload (protocol.md §1.7, §2.8): every kind of invalid
// hypercall, ring and balloon value, in a fixed order so that the host can
// assert exact rejection counts:
//
//   unknownOperation 1, badArgument 4, notRegistered 2, badControlArea 2,
//   reRegistration 1, badBalloonRange 5, badConsoleLength 2, badRingEntry 2,
//   badRingIndex 1
//
// and, when the host offers a PV NIC, the NIC's (protocol.md §5.6):
//
//   notAttached 1, badNetPage 2, reAttach 1, badTxLength 2, badTxAddress 3,
//   badTxIndex 1, badRxLength 1, badRxAddress 1
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
        // n. With a PV NIC offered (--net): its own invalid values (NetChaos).
        if NetDevice(area: layout.netArea, pv: pv).available { NetChaos.run(kernel) }
        // o. Still running.
        Console.log("chaos done")
    }

    /// A page frame below 4 GiB (REGISTER's argument has 20 bits) that is not
    /// RAM: just past the end of RAM, or the top of the 32-bit hole.
    private static func pfnOutsideRAM(_ kernel: Kernel, ramEndPFN: UInt64) -> UInt64 {
        let candidate = ramEndPFN &+ 10
        return candidate <= Layout.maximumControlPFN ? candidate : Layout.maximumControlPFN
    }
}

/// The PV NIC's part of chaos (protocol.md §1.7, §5.6). The RX step needs one frame from
/// outside (any broadcast on the NIC's bridge); it says so on the console and waits.
enum NetChaos {
    static func run(_ kernel: Kernel) {
        let layout = kernel.layout
        let pv = kernel.pv
        var nic = NetDevice(area: layout.netArea, pv: pv)
        let pfn = UInt32(truncatingIfNeeded: layout.netArea >> 12)
        // 1. NET_KICK before NET_ATTACH: notAttached; with NET_SLEEP offered, a NET_SLEEP
        //    before NET_ATTACH too (notAttached; served as a plain SLEEP).
        nic.kick()
        if pv.features & NetDevice.featureNetSleep != 0 { pv.perform(NetDevice.opSleep, 1) }
        // 2. NET_ATTACH of a net page with a wrong magic, then of one whose TX ring is the
        //    control page: badNetPage ×2.
        nic.prepare()
        nic.store32(NetDevice.magicOffset, ~NetDevice.magic)
        if nic.attach(postBuffers: false) { panic("chaos: the host accepted a net page with a bad magic") }
        nic.prepare()
        nic.store64(NetDevice.txRingOffset, layout.controlPage)
        if nic.attach(postBuffers: false) { panic("chaos: the host accepted a TX ring on the control page") }
        // 3. The proper NET_ATTACH (no RX buffers yet), then again: reAttach.
        nic.prepare()
        guard nic.attach(postBuffers: false) else { panic("chaos: the host refused a valid NET_ATTACH") }
        pv.perform(NetDevice.opAttach, pfn)
        // 4. Five bad TX descriptors: badTxLength ×2 (empty, longer than a frame) and
        //    badTxAddress ×3 (beyond RAM, wrapping past 2^64, the control page).
        let first = nic.txProd
        nic.setDescriptor(ring: NetArea.txRing, first, gpa: layout.netArea &+ NetArea.txBuffers, length: 0)
        nic.setDescriptor(ring: NetArea.txRing, first &+ 1, gpa: layout.netArea &+ NetArea.txBuffers, length: 5000)
        nic.setDescriptor(ring: NetArea.txRing, first &+ 2, gpa: layout.ramEnd, length: 60)
        nic.setDescriptor(ring: NetArea.txRing, first &+ 3, gpa: 0xffff_ffff_ffff_ffc0, length: 100)
        nic.setDescriptor(ring: NetArea.txRing, first &+ 4, gpa: layout.controlPage, length: 60)
        nic.publishTx(first &+ 5)
        // With net page version 3 the host validates them on the NET_SLEEP path (§5.5).
        if nic.sleepFlush { nic.waitForFrames(milliseconds: 1) }
        nic.flushKick()
        waitForHost(kernel, "the TX descriptors") { nic.txCons == first &+ 5 }
        // 5. tx_prod more than a ring ahead of tx_cons: badTxIndex (the host resynchronises).
        let far = nic.txProd &+ NetArea.entries &+ 5
        nic.publishTx(far)
        nic.flushKick()
        waitForHost(kernel, "tx_prod beyond the ring") { nic.txCons == far }
        // 6. RX: a buffer shorter than a frame, one on the net page, then a good one:
        //    badRxLength and badRxAddress when the next frame arrives.
        let buffer = layout.netArea &+ NetArea.rxBuffers
        nic.setDescriptor(ring: NetArea.rxRing, 0, gpa: buffer, length: 100)
        nic.setDescriptor(ring: NetArea.rxRing, 1, gpa: layout.netArea, length: 2048)
        nic.setDescriptor(ring: NetArea.rxRing, 2, gpa: buffer, length: 2048)
        nic.store32(NetDevice.rxAvailOffset, 3)
        Console.log("chaos: nic waiting for a frame")
        let deadline = kernel.clock.now() &+ 120 &* kernel.clock.ticksPerSecond
        while nic.rxProd != 3 {
            if kernel.clock.now() > deadline { panic("chaos: no frame reached the NIC within 120 s") }
            nic.waitForFrames(milliseconds: 100)
        }
        Console.log("chaos: nic done")
    }

    /// Spins until the host's I/O thread has done its part (bounded: 60 s of guest time).
    private static func waitForHost(_ kernel: Kernel, _ what: StaticString, _ done: () -> Bool) {
        let deadline = kernel.clock.now() &+ 60 &* kernel.clock.ticksPerSecond
        while !done() {
            if kernel.clock.now() > deadline {
                var line = ConsoleLine("pvguest: panic: chaos: the host did not complete ")
                line.append(what)
                panic(line)
            }
            CPU.pause()
        }
    }
}
