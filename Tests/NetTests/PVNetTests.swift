@testable import Core
import Testing

/// The PV NIC's host side (protocol.md §5) against a simulated guest: the test writes the
/// guest's control page, net page, rings and buffers into guest memory and issues its
/// hypercalls. No /dev/kvm, no TAP.
@Suite struct PVNetTests {
    let memory = try! GuestMemory(size: 16 << 20)
    let controlGPA: UInt64 = 0x20_0000, dirtyRingGPA: UInt64 = 0x20_1000
    let netGPA: UInt64 = 0x30_0000, txGPA: UInt64 = 0x30_1000, rxGPA: UInt64 = 0x30_2000
    let buffers: UInt64 = 0x40_0000
    let entries: UInt32 = 16
    let mac = MACAddress("52:54:00:12:34:56")!

    func put32(_ gpa: UInt64, _ v: UInt32) { try! memory.writeInteger(v, at: GuestPhysicalAddress(gpa)) }
    func put64(_ gpa: UInt64, _ v: UInt64) { try! memory.writeInteger(v, at: GuestPhysicalAddress(gpa)) }
    func u32(_ gpa: UInt64) -> UInt32 { try! memory.readInteger(UInt32.self, at: GuestPhysicalAddress(gpa)) }
    func u64(_ gpa: UInt64) -> UInt64 { try! memory.readInteger(UInt64.self, at: GuestPhysicalAddress(gpa)) }

    @discardableResult
    func call(_ pv: PVInterface, _ op: UInt32, _ arg: UInt32 = 0) -> IOAction {
        let v = (op | (arg << 12)).littleEndian
        return withUnsafeBytes(of: v) { pv.write(offset: 0, data: $0) }
    }

    /// A PV interface with a NIC and a registered control page (dirty ring of 64 entries).
    func registeredPV(net: Bool = true) -> PVInterface {
        put32(controlGPA, 0x434d_5650); put32(controlGPA + 4, 1); put64(controlGPA + 8, dirtyRingGPA)
        put32(controlGPA + 0x10, 64)
        let pv = PVInterface(memory: memory, console: ConsoleBuffer(), net: net ? PVNet(memory: memory, mac: mac) : nil)
        call(pv, 3, UInt32(controlGPA >> 12))
        #expect(pv.isRegistered)
        return pv
    }

    func prepareNetPage(magic: UInt32 = 0x544e_5650, tx: UInt64? = nil, txEntries: UInt32? = nil) {
        put32(netGPA, magic); put32(netGPA + 4, 1)
        put64(netGPA + 8, tx ?? txGPA); put64(netGPA + 0x10, rxGPA)
        put32(netGPA + 0x18, txEntries ?? entries); put32(netGPA + 0x1c, entries)
    }

    func attached() -> (PVInterface, PVNet) {
        let pv = registeredPV()
        prepareNetPage()
        call(pv, 0x020, UInt32(netGPA >> 12))
        let net = pv.net!
        #expect(net.isAttached && net.snapshot.totalRejected == 0)
        return (pv, net)
    }

    func descriptor(_ ring: UInt64, _ i: UInt32, gpa: UInt64, length: UInt32) {
        let slot = ring + UInt64(i % entries) * 16
        put64(slot, gpa); put32(slot + 8, length); put32(slot + 12, 0)
    }
    func status(_ ring: UInt64, _ i: UInt32) -> (length: UInt32, status: UInt32) {
        let slot = ring + UInt64(i % entries) * 16
        return (u32(slot + 8), u32(slot + 12))
    }

    /// Queues TX frames (each `length` bytes of `fill`) at tx_prod.
    func queueTx(_ frames: [(gpa: UInt64, length: UInt32)]) {
        var prod = u32(netGPA + 0x80)
        for f in frames {
            descriptor(txGPA, prod, gpa: f.gpa, length: f.length)
            prod &+= 1
        }
        put32(netGPA + 0x80, prod)
    }

    func transmitAll(_ net: PVNet) -> [[UInt8]] {
        var sent: [[UInt8]] = []
        net.transmit(limit: 64) { sent.append(Array($0)) }
        return sent
    }

    // MARK: Attach

    @Test func attachWritesMACAndIndices() {
        let (_, net) = attached()
        #expect(u32(netGPA + 0x48) == 1)            // host_status
        #expect(u32(netGPA + 0x4c) == 1514)         // max_frame
        #expect(u64(netGPA + 0x40) == 0x5634_1200_5452) // 52:54:00:12:34:56, byte 0 first
        #expect(net.snapshot.attached)
        #expect(memory.takeHostWrittenPages().contains(Int(netGPA >> 12)))
    }

    @Test(arguments: ["magic", "version", "entries", "misaligned", "beyondRAM", "onControlPage", "ringsOverlap", "pageOutsideRAM"])
    func attachRejectsABadNetPage(_ flaw: String) {
        let pv = registeredPV()
        var pfn = UInt32(netGPA >> 12)
        switch flaw {
        case "magic": prepareNetPage(magic: 0x1234)
        case "version": prepareNetPage(); put32(netGPA + 4, 4)
        case "entries": prepareNetPage(txEntries: 12)
        case "misaligned": prepareNetPage(tx: txGPA + 8)
        case "beyondRAM": prepareNetPage(tx: 16 << 20)
        case "onControlPage": prepareNetPage(tx: controlGPA)
        case "ringsOverlap": prepareNetPage(tx: rxGPA)
        default: prepareNetPage(); pfn = UInt32((64 << 20) >> 12)
        }
        call(pv, 0x020, pfn)
        #expect(!pv.net!.isAttached)
        #expect(pv.net!.snapshot.rejected == [.badNetPage: 1])
        #expect(u32(netGPA + 0x48) == 0)
    }

    @Test func secondAttachKickBeforeAttachAndNoNIC() {
        let pv = registeredPV()
        call(pv, 0x021)
        #expect(pv.net!.snapshot.rejected == [.notAttached: 1])
        prepareNetPage()
        call(pv, 0x020, UInt32(netGPA >> 12))
        call(pv, 0x020, UInt32(netGPA >> 12))
        #expect(pv.net!.snapshot.rejected == [.notAttached: 1, .reAttach: 1])
        call(pv, 0x021, 5)
        #expect(pv.snapshot.rejected == [.badArgument: 1])
        // Without a NIC the operations do not exist.
        let plain = registeredPV(net: false)
        call(plain, 0x020, UInt32(netGPA >> 12))
        call(plain, 0x021)
        #expect(plain.snapshot.rejected == [.unknownOperation: 2])
    }

    @Test func netOperationsNeedRegister() {
        let pv = PVInterface(memory: memory, console: ConsoleBuffer(), net: PVNet(memory: memory, mac: mac))
        call(pv, 0x020, UInt32(netGPA >> 12))
        #expect(pv.snapshot.rejected == [.notRegistered: 1])
    }

    // MARK: Transmit

    @Test func transmitSendsGoodFramesAndRejectsBadOnes() {
        let (pv, net) = attached()
        let frame = (0..<60).map { UInt8($0) }
        try! memory.write(frame, at: GuestPhysicalAddress(buffers))
        queueTx([(buffers, 60), (buffers, 0), (buffers, 13), (buffers, 1515), (16 << 20, 60),
                 (0xffff_ffff_ffff_ffe0, 60), (controlGPA + 100, 60), (txGPA, 60), (netGPA + 4000, 200), (buffers, 60)])
        let kicked = Locked(0)
        net.onKick { kicked.withLock { $0 += 1 } }
        call(pv, 0x021)
        #expect(kicked.value == 1)
        let sent = transmitAll(net)
        #expect(sent == [frame, frame])
        #expect(net.snapshot.rejected == [.badTxLength: 3, .badTxAddress: 5])
        #expect(u32(netGPA + 0x50) == 10) // tx_cons
        #expect((0..<10).map { status(txGPA, $0).status } == [1, 2, 2, 2, 3, 3, 3, 3, 3, 1])
        #expect(net.snapshot.txFrames == 2 && net.snapshot.txBytes == 120)
    }

    @Test func txIndexBeyondTheRingIsDroppedAndResynchronised() {
        let (_, net) = attached()
        put32(netGPA + 0x80, entries + 1)
        #expect(transmitAll(net).isEmpty)
        #expect(net.snapshot.rejected == [.badTxIndex: 1])
        #expect(u32(netGPA + 0x50) == entries + 1)
        // The guest goes on from there.
        try! memory.write([UInt8](repeating: 7, count: 20), at: GuestPhysicalAddress(buffers))
        queueTx([(buffers, 20)])
        #expect(transmitAll(net) == [[UInt8](repeating: 7, count: 20)])
    }

    @Test func transmitHonoursItsLimit() {
        let (_, net) = attached()
        queueTx((0..<10).map { _ in (buffers, 60) })
        #expect(net.transmit(limit: 4) { _ in } == 4)
        #expect(u32(netGPA + 0x50) == 4)
        #expect(net.armKick()) // six still queued: transmit again, no kick will come
        #expect(net.transmit(limit: 64) { _ in } == 6)
        #expect(!net.armKick())
        #expect(u32(netGPA + 0x58) == 10) // tx_event = tx_cons
    }

    // MARK: Receive

    func post(_ count: UInt32, capacity: UInt32 = 2048, at gpa: ((UInt32) -> UInt64)? = nil) {
        var avail = u32(netGPA + 0x84)
        for _ in 0..<count {
            descriptor(rxGPA, avail, gpa: gpa?(avail) ?? buffers + UInt64(avail % entries) * 2048, length: capacity)
            avail &+= 1
        }
        put32(netGPA + 0x84, avail)
    }

    func deliver(_ net: PVNet, _ frames: [[UInt8]]) {
        func go(_ rest: ArraySlice<[UInt8]>, _ acc: [UnsafeRawBufferPointer]) {
            guard let first = rest.first else { net.deliver(acc); return }
            first.withUnsafeBytes { go(rest.dropFirst(), acc + [$0]) }
        }
        go(frames[...], [])
    }

    @Test func receiveFillsPostedBuffersAndDropsWithout() {
        let (_, net) = attached()
        post(2)
        let a = [UInt8](repeating: 0xaa, count: 60), b = [UInt8](repeating: 0xbb, count: 1514)
        deliver(net, [a, b, a])
        #expect(u32(netGPA + 0x54) == 2) // rx_prod
        #expect(status(rxGPA, 0) == (60, 1) && status(rxGPA, 1) == (1514, 1))
        #expect(try! memory.read(at: GuestPhysicalAddress(buffers), count: 60) == a)
        #expect(try! memory.read(at: GuestPhysicalAddress(buffers + 2048), count: 1514) == b)
        #expect(net.snapshot.rxFrames == 2 && net.snapshot.rxDropped == 1 && net.snapshot.totalRejected == 0)
        // Too long or too short frames are dropped, not delivered.
        post(1)
        deliver(net, [[UInt8](repeating: 1, count: 1515), [1, 2, 3]])
        #expect(net.snapshot.rxDropped == 3 && u32(netGPA + 0x54) == 2)
        // Host writes to the buffers are recorded for the dirty log.
        let written = memory.takeHostWrittenPages()
        #expect(written.contains(Int(buffers >> 12)) && written.contains(Int(rxGPA >> 12)))
    }

    @Test func badRxDescriptorsAreSkippedAndCounted() {
        let (_, net) = attached()
        post(1, capacity: 100)                           // shorter than a frame
        post(1, at: { _ in netGPA })                     // the net page
        post(1, at: { _ in controlGPA - 1024 })          // its capacity runs into the control page
        post(1, at: { _ in (16 << 20) - 1024 })          // runs past RAM
        post(1)                                          // good
        let frame = [UInt8](repeating: 5, count: 64)
        deliver(net, [frame])
        #expect(net.snapshot.rejected == [.badRxLength: 1, .badRxAddress: 3])
        #expect((0..<5).map { status(rxGPA, $0).status } == [2, 3, 3, 3, 1])
        #expect(u32(netGPA + 0x54) == 5 && net.snapshot.rxFrames == 1)
        #expect(u32(netGPA) == 0x544e_5650) // the net page was not written over
    }

    @Test func rxIndexBeyondTheRingUsesNoBuffer() {
        let (_, net) = attached()
        put32(netGPA + 0x84, entries + 1)
        deliver(net, [[UInt8](repeating: 1, count: 60)])
        #expect(net.snapshot.rejected == [.badRxIndex: 1] && net.snapshot.rxDropped == 1)
        #expect(u32(netGPA + 0x54) == 0)
    }

    // MARK: Event indices (§5.5)

    @Test func wakesOnlyWhenTheGuestAsked() {
        let (_, net) = attached()
        let wakeCount = Locked(0)
        net.onWake { wakeCount.withLock { $0 += 1 } }
        var wakes: Int { wakeCount.value }
        post(8)
        let frame = [UInt8](repeating: 1, count: 60)
        put32(netGPA + 0x88, 0)           // rx_event = 0: wake me at the first frame
        deliver(net, [frame, frame])
        #expect(wakes == 1)
        deliver(net, [frame])             // rx_event still 0: already passed, no wake
        #expect(wakes == 1)
        put32(netGPA + 0x88, 3)           // the guest consumed 3 and sleeps again
        deliver(net, [frame, frame])
        #expect(wakes == 2 && net.snapshot.wakes == 2)
    }

    @Test func needsEventWrapsAround() {
        #expect(PVNet.needsEvent(5, new: 6, old: 5))
        #expect(!PVNet.needsEvent(6, new: 6, old: 5))
        #expect(PVNet.needsEvent(UInt32.max, new: 1, old: UInt32.max - 1))
        #expect(!PVNet.needsEvent(2, new: 1, old: UInt32.max - 1))
        #expect(!PVNet.needsEvent(0, new: 7, old: 7))
    }

    @Test func macAddresses() {
        #expect(MACAddress("52:54:00:12:34:56")?.description == "52:54:00:12:34:56")
        #expect(MACAddress("01:00:5e:00:00:01") == nil) // multicast
        #expect(MACAddress("00:00:00:00:00:00") == nil)
        #expect(MACAddress("52:54:00:12:34") == nil && MACAddress("52:54:00:12:34:5g") == nil)
        let r = MACAddress.random()
        #expect(r.bytes[0] & 0x03 == 0x02 && r.bytes.count == 6)
    }
}
