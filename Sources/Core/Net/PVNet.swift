import CKVM
import Foundation

/// Why the host refused something a guest did with its PV NIC (protocol.md §5.6).
public enum NetRejection: String, CaseIterable, Sendable {
    case badNetPage, reAttach, notAttached, badTxIndex, badRxIndex
    case badTxLength, badTxAddress, badRxLength, badRxAddress
}

/// The host side of the PV network device (protocol.md §5): the net page, the TX and RX
/// descriptor rings in guest memory, and the event indices that keep notifications rare.
///
/// Two threads call in: the vCPU thread (NET_ATTACH and NET_KICK, through `PVInterface`) and
/// the NIC's I/O thread (`transmit`, `deliver`, `armKick`). One lock guards the state. Every
/// value the guest supplies — indices, descriptor addresses and lengths — is read once,
/// validated, counted by reason when bad, and only the guest's own traffic suffers for it.
/// The host keeps its own copies of the indices it owns (`tx_cons`, `rx_prod`) and never
/// reads them back from guest memory.
public final class PVNet: @unchecked Sendable {
    /// The largest frame either way: an Ethernet header and a 1500-byte payload, no FCS.
    public static let maxFrame = 1514
    /// The smallest frame the guest may send: an Ethernet header.
    public static let minFrame = 14

    public struct Counters: Sendable, Equatable {
        public var attached = false
        public var kicks = 0, wakes = 0
        /// NET_SLEEPs (§5.5): sleeps that transmitted the TX ring first, in place of a kick.
        public var sleepFlushes = 0
        public var txFrames = 0, txBytes = 0, rxFrames = 0, rxBytes = 0
        /// Frames from the backend that found no RX buffer (or only a too-long frame): dropped.
        public var rxDropped = 0
        public var rejected: [NetRejection: Int] = [:]
        public var totalRejected: Int { rejected.values.reduce(0, +) }
        public init() {}
    }

    let memory: GuestMemory
    let lock = NSLock()
    // Guarded by `lock`:
    var counters = Counters()
    var macValue: MACAddress
    var page: NetPage?
    var tx: NetRing?, rx: NetRing?
    var txCons: UInt32 = 0, rxProd: UInt32 = 0
    /// The vCPU that issued NET_ATTACH: the one a wake for received frames goes to (§5.5).
    var rxVCPUValue: UInt32 = 0
    /// The net page's `announce` (§5.2): bumped each time the VM resumes from saved state.
    var announce: UInt32 = 0
    /// While the VM is paused (or not yet resumed after a restore) the host touches neither
    /// the rings nor guest memory: frames wait in the backend and the TAP (§5.8).
    var quiesced = false
    /// Ranges no buffer may touch: the net page, both rings, and the PV control page and dirty ring.
    var protected: [GuestRange] = []
    private var kickHandler: (@Sendable () -> Void)?
    private var wakeHandler: (@Sendable () -> Void)?
    private var sleepFlushHandler: (@Sendable () -> Void)?
    private var sleepWaitHandler: (@Sendable (Int32, Int32) -> Bool)?

    /// The VM's vCPU count and the PV ranges no ring or buffer may overlap (the control
    /// page, vCPU areas and dirty rings): set by the `PVInterface` that owns this NIC.
    var vcpuCount = 1
    var pvRanges: @Sendable () -> [GuestRange] = { [] }

    public init(memory: GuestMemory, mac: MACAddress) {
        self.memory = memory
        self.macValue = mac
    }

    /// The MAC the guest was given (after a restore: the one in the saved state).
    public var mac: MACAddress { lock.withLock { macValue } }
    public var snapshot: Counters { lock.withLock { counters } }
    public var isAttached: Bool { lock.withLock { page != nil } }
    /// The vCPU to wake for received frames: the one that attached the NIC (§5.5).
    public var rxVCPU: Int { lock.withLock { Int(rxVCPUValue) } }
    public var isQuiesced: Bool { lock.withLock { quiesced } }
    /// Records the vCPU whose NET_ATTACH succeeded (its thread reports it, `IOAction.netAttached`).
    func setRXVCPU(_ index: UInt32) { lock.withLock { rxVCPUValue = index } }

    /// Stops (true) or restarts (false) all movement of frames: `Machine.pause()` and
    /// `resume()` call it, so nothing writes guest memory between the final dirty harvest and
    /// the saved state (§5.8). The backend is poked (its kick handler) to notice.
    public func setQuiesced(_ value: Bool) {
        let handler = lock.withLock { () -> (@Sendable () -> Void)? in
            guard quiesced != value else { return nil }
            quiesced = value
            return kickHandler
        }
        handler?()
    }

    /// Called (on the vCPU thread) when the guest kicks: the backend should transmit.
    public func onKick(_ handler: @escaping @Sendable () -> Void) { lock.withLock { kickHandler = handler } }
    /// Called on the vCPU thread when the guest issues NET_SLEEP (§5.5), before it sleeps: the
    /// backend transmits the TX ring there and then (no thread hop). Without one, NET_SLEEP
    /// calls the kick handler instead.
    public func onSleepFlush(_ handler: @escaping @Sendable () -> Void) { lock.withLock { sleepFlushHandler = handler } }
    /// Called on the NIC's vCPU thread (the one that attached it) while its guest sleeps in
    /// NET_SLEEP (§5.5): the backend waits there for frames, up to the given milliseconds or
    /// until the given eventfd is readable, and delivers what arrives. False: it cannot wait
    /// (nothing done), the thread sleeps as without it.
    public func onSleepWait(_ handler: @escaping @Sendable (Int32, Int32) -> Bool) { lock.withLock { sleepWaitHandler = handler } }
    /// Called (on the I/O thread) when the guest asked to be woken for received frames.
    public func onWake(_ handler: @escaping @Sendable () -> Void) { lock.withLock { wakeHandler = handler } }

    func reject(_ why: NetRejection) { counters.rejected[why, default: 0] += 1 } // lock held

    // MARK: Hypercalls (§5.1), from PVInterface with its lock held

    /// NET_ATTACH: validates the net page at `pfn` and its rings; `pvRanges`
    /// are the PV control page, vCPU areas and dirty rings, which no ring or buffer may
    /// overlap. True when the NIC is now attached.
    @discardableResult
    func attach(pfn: UInt64, pvRanges: [GuestRange]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard page == nil else { reject(.reAttach); return false }
        guard let gpa = PageFrame(pfn).address, adoptLocked(gpa: gpa, pvRanges: pvRanges) else {
            reject(.badNetPage); return false
        }
        txCons = page!.u32(.txProd) // the guest starts with empty rings; anything else is its loss
        rxProd = 0
        publishLocked(txEvent: txCons)
        counters.attached = true
        return true
    }

    /// Validates the net page at `gpa` and its rings (§5.2) and adopts them. Lock held.
    func adoptLocked(gpa: GuestPhysicalAddress, pvRanges: [GuestRange]) -> Bool {
        let pageSize = GuestPhysicalAddress.pageSize
        guard gpa.isPageAligned, let pageRange = GuestRange(start: gpa, size: pageSize),
              let bytes = try? memory.bytes(at: gpa, count: pageSize), let host = bytes.baseAddress else { return false }
        let p = NetPage(gpa: gpa, host: host)
        guard p.u32(.magic) == NetPage.magic, NetPage.versions.contains(UInt16(truncatingIfNeeded: p.u32(.version))),
              p.u32(.version) >> 16 == 0,
              let t = ring(gpa: p.u64(.txRingGPA), entries: p.u32(.txEntries)),
              let r = ring(gpa: p.u64(.rxRingGPA), entries: p.u32(.rxEntries)) else { return false }
        let ranges = [pageRange, t.range, r.range] + pvRanges
        for (i, a) in ranges.enumerated() where ranges[(i + 1)...].contains(where: { $0.overlaps(a) }) { return false }
        page = p; tx = t; rx = r; protected = ranges
        return true
    }

    /// Writes the host's fields of the net page from its own copies (attach, restore). Lock held.
    func publishLocked(txEvent: UInt32) {
        guard let p = page else { return }
        hostStore(p, .txCons, txCons)
        hostStore(p, .rxProd, rxProd)
        hostStore(p, .txEvent, txEvent)
        hostStore(p, .announce, announce)
        p.set64(.mac, macValue.word)
        hostStore(p, .maxFrame, UInt32(Self.maxFrame))
        hostStore(p, .hostStatus, 1)
    }

    func ring(gpa raw: UInt64, entries: UInt32) -> NetRing? {
        let gpa = GuestPhysicalAddress(raw)
        guard NetPage.entryLimits.contains(entries), entries.nonzeroBitCount == 1, gpa.isPageAligned,
              let bytes = try? memory.bytes(at: gpa, count: UInt64(entries) * NetPage.descriptorSize),
              let host = bytes.baseAddress else { return nil }
        return NetRing(gpa: gpa, host: host, entries: entries)
    }

    /// NET_KICK: the guest published TX descriptors and the host had asked to be told.
    func kick() {
        let handler = lock.withLock { () -> (@Sendable () -> Void)? in
            guard page != nil else { reject(.notAttached); return nil }
            counters.kicks += 1
            return kickHandler
        }
        handler?()
    }

    /// NET_SLEEP (§5.5), from `PVInterface` with its lock held: true if the NIC is attached (the
    /// vCPU thread then calls `flushBeforeSleep()`); else counted and served as a plain SLEEP.
    func sleepRequested() -> Bool {
        lock.withLock {
            guard page != nil else { reject(.notAttached); return false }
            counters.sleepFlushes += 1
            return true
        }
    }

    /// On the vCPU thread, between NET_SLEEP's exit and its sleep: transmits what the guest
    /// queued (the backend's sleep-flush handler, else its kick handler). The ring itself is
    /// guarded by the lock in `transmit`, so the I/O thread may transmit at the same time.
    public func flushBeforeSleep() {
        let handler = lock.withLock { sleepFlushHandler ?? kickHandler }
        handler?()
    }

    /// On vCPU `index`'s thread, in NET_SLEEP: waits for frames through the backend's
    /// sleep-wait handler if this vCPU is the one that attached the NIC. False: not waited.
    public func waitForFrames(vcpu index: UInt32, milliseconds: Int32, interrupt: Int32) -> Bool {
        let handler = lock.withLock { page != nil && index == rxVCPUValue ? sleepWaitHandler : nil }
        return handler?(milliseconds, interrupt) ?? false
    }

    // MARK: Transmit (§5.4), on the I/O thread or (NET_SLEEP) the vCPU thread

    /// Takes up to `limit` frames the guest queued, handing each to `send` (valid only during
    /// the call), completes their descriptors and publishes `tx_cons`. Returns how many
    /// descriptors it consumed (sent or rejected).
    @discardableResult
    public func transmit(limit: Int, _ send: (UnsafeRawBufferPointer) -> Void) -> Int {
        lock.lock()
        defer { lock.unlock() }
        guard !quiesced, let page, let tx else { return 0 }
        let prod = page.u32(.txProd)
        let queued = prod &- txCons
        guard queued <= tx.entries else {
            // The guest claims more than a ring: drop what it queued and resynchronise.
            reject(.badTxIndex)
            txCons = prod
            hostStore(page, .txCons, txCons)
            return 0
        }
        let count = min(Int(queued), limit)
        for _ in 0..<count {
            let d = tx.descriptor(txCons)
            let status: NetPage.Status
            if d.length < UInt32(Self.minFrame) || d.length > UInt32(Self.maxFrame) {
                reject(.badTxLength); status = .badLength
            } else if let buffer = buffer(gpa: d.gpa, length: UInt64(d.length)) {
                send(UnsafeRawBufferPointer(buffer))
                counters.txFrames += 1
                counters.txBytes += Int(d.length)
                status = .done
            } else {
                reject(.badTxAddress); status = .badAddress
            }
            tx.complete(txCons, length: nil, status: status)
            txCons &+= 1
        }
        if count > 0 {
            memory.markHostWritten(tx.gpa, count: tx.range.size)
            hostStore(page, .txCons, txCons)
        }
        return count
    }

    /// Asks the guest to kick at its next TX descriptor (`tx_event = tx_cons`, §5.5) and
    /// returns true if descriptors are already waiting (then transmit again, no kick comes).
    public func armKick() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !quiesced, let page else { return false }
        hostStore(page, .txEvent, txCons)
        ckvm_full_fence() // the store of tx_event before the load of tx_prod (§5.5)
        return page.u32(.txProd) != txCons
    }

    // MARK: Receive (§5.4), on the I/O thread

    /// Copies frames into the guest's posted RX buffers, publishes `rx_prod`, and wakes the
    /// guest if it asked (§5.5). A frame that finds no buffer is dropped and counted.
    /// False, and nothing done, while the NIC is quiesced: the caller keeps the frames.
    @discardableResult
    public func deliver(_ frames: [UnsafeRawBufferPointer]) -> Bool {
        var wake: (@Sendable () -> Void)?
        lock.lock()
        if quiesced {
            lock.unlock()
            return false
        }
        if let page, let rx {
            let old = rxProd
            var avail = page.u32(.rxAvail)
            if avail &- rxProd > rx.entries {
                reject(.badRxIndex) // no buffer is trusted until the guest fixes its index
                avail = rxProd
            }
            for frame in frames {
                guard frame.count >= Self.minFrame, frame.count <= Self.maxFrame else { counters.rxDropped += 1; continue }
                var placed = false
                while !placed, rxProd != avail {
                    let d = rx.descriptor(rxProd)
                    if d.length < UInt32(Self.maxFrame) {
                        reject(.badRxLength)
                        rx.complete(rxProd, length: 0, status: .badLength)
                    } else if let buffer = buffer(gpa: d.gpa, length: UInt64(d.length)) {
                        // Sound: the buffer is validated guest RAM of at least maxFrame ≥ frame.count bytes.
                        UnsafeMutableRawBufferPointer(rebasing: buffer[0..<frame.count]).copyMemory(from: frame)
                        memory.markHostWritten(GuestPhysicalAddress(d.gpa), count: UInt64(frame.count))
                        rx.complete(rxProd, length: UInt32(frame.count), status: .done)
                        counters.rxFrames += 1
                        counters.rxBytes += frame.count
                        placed = true
                    } else {
                        reject(.badRxAddress)
                        rx.complete(rxProd, length: 0, status: .badAddress)
                    }
                    rxProd &+= 1
                }
                if !placed { counters.rxDropped += 1 }
            }
            if rxProd != old {
                memory.markHostWritten(rx.gpa, count: rx.range.size)
                hostStore(page, .rxProd, rxProd)
                ckvm_full_fence() // the store of rx_prod before the load of rx_event (§5.5)
                if Self.needsEvent(page.u32(.rxEvent), new: rxProd, old: old) {
                    counters.wakes += 1
                    wake = wakeHandler
                }
            }
        } else {
            counters.rxDropped += frames.count
        }
        lock.unlock()
        wake?()
        return true
    }

    // MARK: Helpers

    /// True if moving an index from `old` to `new` passed `event` (`old <= event < new`,
    /// modulo 2³²): the other side asked to be told about the entry at `event` (§5.5).
    static func needsEvent(_ event: UInt32, new: UInt32, old: UInt32) -> Bool {
        new &- event &- 1 < new &- old
    }

    /// The host bytes of a guest buffer: inside one RAM region, clear of every protected range.
    private func buffer(gpa: UInt64, length: UInt64) -> UnsafeMutableRawBufferPointer? {
        guard let range = GuestRange(start: GuestPhysicalAddress(gpa), size: length),
              !protected.contains(where: { $0.overlaps(range) }),
              let bytes = try? memory.bytes(at: range.start, count: length) else { return nil }
        return bytes
    }

    func hostStore(_ p: NetPage, _ field: NetPage.Field, _ value: UInt32) {
        p.set(field, value)
        memory.markHostWritten(p.gpa, count: GuestPhysicalAddress.pageSize)
    }
}
