// The PV network device, guest side (protocol.md §5): the net page, the TX and
// RX descriptor rings and their buffers in the NIC area (Layout), and the
// event indices that keep exits rare: the guest kicks only when the host asked
// (tx_event), and sleeps with rx_event set so the host wakes it on RX.

/// Where the NIC's pieces sit inside `Layout.netArea` (all page-aligned).
enum NetArea {
    static let entries: UInt32 = 64
    static let bufferSize: UInt64 = 2048
    static let netPage: UInt64 = 0
    static let txRing: UInt64 = 0x1000
    static let rxRing: UInt64 = 0x2000
    static let txBuffers: UInt64 = 0x3000
    static let rxBuffers: UInt64 = txBuffers + UInt64(entries) * bufferSize
    /// The key-value store's slots (Serve.swift).
    static let store: UInt64 = rxBuffers + UInt64(entries) * bufferSize
    static let storeBytes: UInt64 = 128 << 10
    static let bytes: UInt64 = store + storeBytes
}

struct NetDevice {
    static let magic: UInt32 = 0x544e_5650  // "PVNT"
    static let featureNet: UInt32 = 1 << 8
    static let opAttach: UInt32 = 0x020
    static let opKick: UInt32 = 0x021
    static let opSleep: UInt32 = 0x022
    static let featureNetSleep: UInt32 = 1 << 9
    static let maxFrame = 1514
    static let statusDone: UInt32 = 1

    // Net page fields (§5.2).
    static let magicOffset = 0x000, versionOffset = 0x004, txRingOffset = 0x008, rxRingOffset = 0x010
    static let txEntriesOffset = 0x018, rxEntriesOffset = 0x01c
    static let macOffset = 0x040, hostStatusOffset = 0x048, txConsOffset = 0x050, rxProdOffset = 0x054
    static let txEventOffset = 0x058, announceOffset = 0x05c
    static let txProdOffset = 0x080, rxAvailOffset = 0x084, rxEventOffset = 0x088

    let area: UInt64
    let pv: PVInterface
    var txProd: UInt32 = 0
    var rxCons: UInt32 = 0
    var rxAvail: UInt32 = 0
    /// The MAC the host gave (low 48 bits, bytes in wire order from the lowest byte).
    var mac: UInt64 = 0
    /// The host's `announce` when the guest last announced itself (§5.2, version 2).
    var announced: UInt32 = 0
    /// Net page version 3 (§5.5): NET_SLEEP transmits, so a kick due is deferred to the next
    /// sleep (or to the next frame, or a full TX ring) instead of costing an exit of its own.
    var sleepFlush = false
    /// tx_prod passed tx_event and no kick or NET_SLEEP has told the host yet.
    var kickPending = false

    init(area: UInt64, pv: PVInterface) {
        self.area = area
        self.pv = pv
    }

    @inline(__always) func pointer(_ offset: UInt64) -> UnsafeMutableRawPointer {
        // Sound: the NIC area is identity-mapped RAM Layout reserved (checked at boot).
        UnsafeMutableRawPointer(bitPattern: UInt(area &+ offset))!
    }
    @inline(__always) func load32(_ field: Int) -> UInt32 { pvg_load32(pointer(NetArea.netPage) + field) }
    @inline(__always) func store32(_ field: Int, _ v: UInt32) { pvg_store32(pointer(NetArea.netPage) + field, v) }
    @inline(__always) func store64(_ field: Int, _ v: UInt64) { pvg_store64(pointer(NetArea.netPage) + field, v) }

    var available: Bool { pv.present && pv.features & Self.featureNet != 0 }

    /// Writes the net page's header and empty rings (no NET_ATTACH yet). Version 3 (NET_SLEEP)
    /// when the host offers it and `netSleep` allows, else 2 (the host publishes `announce`).
    mutating func prepare(netSleep: Bool = true) {
        sleepFlush = netSleep && pv.features & Self.featureNetSleep != 0
        Layout.zero(gpa: area, words: (NetArea.txBuffers) / 8)
        store32(Self.magicOffset, Self.magic)
        store32(Self.versionOffset, sleepFlush ? 3 : 2)
        store64(Self.txRingOffset, area &+ NetArea.txRing)
        store64(Self.rxRingOffset, area &+ NetArea.rxRing)
        store32(Self.txEntriesOffset, NetArea.entries)
        store32(Self.rxEntriesOffset, NetArea.entries)
    }

    /// NET_ATTACH with the prepared page; true if the host accepted it.
    mutating func attach(postBuffers: Bool = true) -> Bool {
        pv.perform(Self.opAttach, UInt32(truncatingIfNeeded: (area &+ NetArea.netPage) >> 12))
        guard load32(Self.hostStatusOffset) == 1 else { return false }
        mac = pvg_load64(pointer(NetArea.netPage) + Self.macOffset) & 0xffff_ffff_ffff
        txProd = load32(Self.txConsOffset)
        announced = load32(Self.announceOffset)
        if postBuffers {
            while rxAvail &- rxCons < NetArea.entries { post(rxAvail) }
            store32(Self.rxAvailOffset, rxAvail)
        }
        return true
    }

    /// True once after each time the host bumped `announce` (the VM resumed on a new host
    /// or from a snapshot, §5.2): the stack should announce itself again.
    mutating func movedSinceAnnounced() -> Bool {
        let now = load32(Self.announceOffset)
        guard now != announced else { return false }
        announced = now
        return true
    }

    // MARK: Descriptors

    func setDescriptor(ring: UInt64, _ index: UInt32, gpa: UInt64, length: UInt32) {
        let slot = pointer(ring &+ UInt64(index % NetArea.entries) &* 16)
        pvg_store64(slot, gpa)
        pvg_store32(slot + 8, length)
        pvg_store32(slot + 12, 0)
    }

    func descriptor(ring: UInt64, _ index: UInt32) -> (length: UInt32, status: UInt32) {
        let slot = pointer(ring &+ UInt64(index % NetArea.entries) &* 16)
        return (pvg_load32(slot + 8), pvg_load32(slot + 12))
    }

    /// Posts the RX buffer of slot `index` (each slot has its own buffer) and advances rxAvail.
    private mutating func post(_ index: UInt32) {
        let buffer = area &+ NetArea.rxBuffers &+ UInt64(index % NetArea.entries) &* NetArea.bufferSize
        setDescriptor(ring: NetArea.rxRing, index, gpa: buffer, length: UInt32(NetArea.bufferSize))
        rxAvail &+= 1
    }

    // MARK: Transmit

    var txCons: UInt32 { load32(Self.txConsOffset) }

    /// The buffer for the next frame, once its slot is free again (the host completed it).
    mutating func nextTxBuffer() -> UnsafeMutablePointer<UInt8> {
        if txProd &- txCons >= NetArea.entries { flushKick() } // a full ring waits for the host
        while txProd &- txCons >= NetArea.entries { CPU.pause() }
        let gpa = area &+ NetArea.txBuffers &+ UInt64(txProd % NetArea.entries) &* NetArea.bufferSize
        return pointer(gpa &- area).assumingMemoryBound(to: UInt8.self)
    }

    /// Queues the frame built in `nextTxBuffer()` (`length` bytes) and kicks if the host asked.
    mutating func send(length: Int) {
        let gpa = area &+ NetArea.txBuffers &+ UInt64(txProd % NetArea.entries) &* NetArea.bufferSize
        setDescriptor(ring: NetArea.txRing, txProd, gpa: gpa, length: UInt32(length))
        publishTx(txProd &+ 1)
    }

    /// Stores tx_prod and kicks when it passed tx_event (§5.5).
    mutating func publishTx(_ new: UInt32) {
        let old = txProd
        txProd = new
        store32(Self.txProdOffset, new)
        CPU.memoryFence()  // tx_prod visible before tx_event is read
        if Self.needsEvent(load32(Self.txEventOffset), new: new, old: old) {
            if sleepFlush { kickPending = true } else { kick() }
        }
    }

    func kick() { pv.perform(Self.opKick, 0) }

    /// Issues a deferred kick now (before the guest turns to other work).
    mutating func flushKick() {
        guard kickPending else { return }
        kickPending = false
        kick()
    }

    static func needsEvent(_ event: UInt32, new: UInt32, old: UInt32) -> Bool {
        new &- event &- 1 < new &- old
    }

    // MARK: Receive

    var rxProd: UInt32 { load32(Self.rxProdOffset) }

    /// The frame at rx_cons, or nil when none arrived. Length 0: the host rejected that
    /// descriptor (skip it). The buffer stays the guest's until `consume()`.
    func peek() -> (UnsafeMutablePointer<UInt8>, Int)? {
        guard rxCons != rxProd else { return nil }
        let d = descriptor(ring: NetArea.rxRing, rxCons)
        let gpa = NetArea.rxBuffers &+ UInt64(rxCons % NetArea.entries) &* NetArea.bufferSize
        let ok = d.status == Self.statusDone && d.length <= UInt32(Self.maxFrame)
        return (pointer(gpa).assumingMemoryBound(to: UInt8.self), ok ? Int(d.length) : 0)
    }

    /// Gives the buffer at rx_cons back to the host (posted again as a fresh RX descriptor).
    mutating func consume() {
        rxCons &+= 1
        post(rxAvail)
        store32(Self.rxAvailOffset, rxAvail)
    }

    /// Waits for frames: asks the host to wake it (rx_event), checks once more, then sleeps
    /// at most `milliseconds` (§5.5) — with NET_SLEEP when a kick is due, so the host sends
    /// the queued frames and sleeps in one exit.
    mutating func waitForFrames(milliseconds: UInt32) {
        store32(Self.rxEventOffset, rxCons)
        CPU.memoryFence()  // rx_event visible before rx_prod is read again
        if rxProd != rxCons { return }
        guard kickPending else { return pv.sleep(milliseconds: milliseconds) }
        kickPending = false
        pv.perform(Self.opSleep, milliseconds == 0 ? 1 : min(milliseconds, PVInterface.maximumArgument))
    }
}
