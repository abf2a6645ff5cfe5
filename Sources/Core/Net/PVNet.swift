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
        public var txFrames = 0, txBytes = 0, rxFrames = 0, rxBytes = 0
        /// Frames from the backend that found no RX buffer (or only a too-long frame): dropped.
        public var rxDropped = 0
        public var rejected: [NetRejection: Int] = [:]
        public var totalRejected: Int { rejected.values.reduce(0, +) }
        public init() {}
    }

    public let mac: MACAddress
    let memory: GuestMemory
    private let lock = NSLock()
    // Guarded by `lock`:
    private var counters = Counters()
    private var page: NetPage?
    private var tx: NetRing?, rx: NetRing?
    private var txCons: UInt32 = 0, rxProd: UInt32 = 0
    /// Ranges no buffer may touch: the net page, both rings, and the PV control page and dirty ring.
    private var protected: [GuestRange] = []
    private var kickHandler: (@Sendable () -> Void)?
    private var wakeHandler: (@Sendable () -> Void)?

    public init(memory: GuestMemory, mac: MACAddress) {
        self.memory = memory
        self.mac = mac
    }

    public var snapshot: Counters { lock.withLock { counters } }
    public var isAttached: Bool { lock.withLock { page != nil } }

    /// Called (on the vCPU thread) when the guest kicks: the backend should transmit.
    public func onKick(_ handler: @escaping @Sendable () -> Void) { lock.withLock { kickHandler = handler } }
    /// Called (on the I/O thread) when the guest asked to be woken for received frames.
    public func onWake(_ handler: @escaping @Sendable () -> Void) { lock.withLock { wakeHandler = handler } }

    private func reject(_ why: NetRejection) { counters.rejected[why, default: 0] += 1 } // lock held

    // MARK: Hypercalls (§5.1), from PVInterface with its lock held

    /// NET_ATTACH: validates the net page at `pfn` and its rings; `pvRanges` are the PV
    /// control page and dirty ring, which no ring or buffer may overlap.
    func attach(pfn: UInt64, pvRanges: [GuestRange]) {
        lock.lock()
        defer { lock.unlock() }
        guard page == nil else { reject(.reAttach); return }
        let pageSize = GuestPhysicalAddress.pageSize
        guard let gpa = PageFrame(pfn).address, let pageRange = GuestRange(start: gpa, size: pageSize),
              let bytes = try? memory.bytes(at: gpa, count: pageSize), let host = bytes.baseAddress else {
            reject(.badNetPage); return
        }
        let p = NetPage(gpa: gpa, host: host)
        guard p.u32(.magic) == NetPage.magic, UInt16(truncatingIfNeeded: p.u32(.version)) == NetPage.version,
              p.u32(.version) >> 16 == 0,
              let t = ring(gpa: p.u64(.txRingGPA), entries: p.u32(.txEntries)),
              let r = ring(gpa: p.u64(.rxRingGPA), entries: p.u32(.rxEntries)) else {
            reject(.badNetPage); return
        }
        let ranges = [pageRange, t.range, r.range] + pvRanges
        for (i, a) in ranges.enumerated() where ranges[(i + 1)...].contains(where: { $0.overlaps(a) }) {
            reject(.badNetPage); return
        }
        page = p; tx = t; rx = r; protected = ranges
        txCons = p.u32(.txProd) // the guest starts with empty rings; anything else is its loss
        rxProd = 0
        hostStore(p, .txCons, txCons)
        hostStore(p, .rxProd, 0)
        hostStore(p, .txEvent, txCons)
        p.set64(.mac, mac.word)
        hostStore(p, .maxFrame, UInt32(Self.maxFrame))
        hostStore(p, .hostStatus, 1)
        counters.attached = true
    }

    private func ring(gpa raw: UInt64, entries: UInt32) -> NetRing? {
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

    // MARK: Transmit (§5.4), on the I/O thread

    /// Takes up to `limit` frames the guest queued, handing each to `send` (valid only during
    /// the call), completes their descriptors and publishes `tx_cons`. Returns how many
    /// descriptors it consumed (sent or rejected).
    @discardableResult
    public func transmit(limit: Int, _ send: (UnsafeRawBufferPointer) -> Void) -> Int {
        lock.lock()
        defer { lock.unlock() }
        guard let page, let tx else { return 0 }
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
        guard let page else { return false }
        hostStore(page, .txEvent, txCons)
        ckvm_full_fence() // the store of tx_event before the load of tx_prod (§5.5)
        return page.u32(.txProd) != txCons
    }

    // MARK: Receive (§5.4), on the I/O thread

    /// Copies frames into the guest's posted RX buffers, publishes `rx_prod`, and wakes the
    /// guest if it asked (§5.5). A frame that finds no buffer is dropped and counted.
    public func deliver(_ frames: [UnsafeRawBufferPointer]) {
        var wake: (@Sendable () -> Void)?
        lock.lock()
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

    private func hostStore(_ p: NetPage, _ field: NetPage.Field, _ value: UInt32) {
        p.set(field, value)
        memory.markHostWritten(p.gpa, count: GuestPhysicalAddress.pageSize)
    }
}
