/// The PV NIC's part of a saved machine (protocol.md §1.8, section `net`; §5.8): its MAC,
/// where its net page is, the host's own ring indices, the vCPU it wakes, the `announce`
/// count and its traffic counters. Everything else — the rings, the buffers, the guest's
/// indices, `tx_event` and `rx_event` — is guest memory and travels with it. Restoring
/// re-validates the net page and its rings in the received memory like a fresh NET_ATTACH:
/// saved state is untrusted input too.
extension PVNet {
    public struct State: StateSection {
        public static let tag: UInt16 = 7
        public static let name = "net"
        public static let size = 72

        public var mac: MACAddress
        /// GPA of the attached net page; 0: never attached (the indices are then 0).
        public var netPage: UInt64
        public var txCons: UInt32, rxProd: UInt32
        /// The vCPU that attached the NIC (woken for received frames).
        public var rxVCPU: UInt32
        /// The net page's `announce` before this save; a restore publishes it plus one.
        public var announce: UInt32
        public var txFrames: UInt64, txBytes: UInt64, rxFrames: UInt64, rxBytes: UInt64, rxDropped: UInt64

        public init(mac: MACAddress, netPage: UInt64 = 0, txCons: UInt32 = 0, rxProd: UInt32 = 0, rxVCPU: UInt32 = 0,
                    announce: UInt32 = 0, txFrames: UInt64 = 0, txBytes: UInt64 = 0, rxFrames: UInt64 = 0,
                    rxBytes: UInt64 = 0, rxDropped: UInt64 = 0) {
            self.mac = mac; self.netPage = netPage; self.txCons = txCons; self.rxProd = rxProd; self.rxVCPU = rxVCPU
            self.announce = announce; self.txFrames = txFrames; self.txBytes = txBytes; self.rxFrames = rxFrames
            self.rxBytes = rxBytes; self.rxDropped = rxDropped
        }

        public func encoded() -> [UInt8] {
            var w = ByteWriter(capacity: Self.size)
            w.raw(mac.bytes)
            w.u16(0)
            w.u64(netPage)
            [txCons, rxProd, rxVCPU, announce].forEach { w.u32($0) }
            [txFrames, txBytes, rxFrames, rxBytes, rxDropped].forEach { w.u64($0) }
            return w.bytes
        }

        /// Checks what can be checked without the VM (protocol.md §1.8 `net`): size, reserved
        /// field, a unicast MAC, a page-aligned net page below 4 GiB, zero indices when never
        /// attached, a vCPU index a VM can have.
        public init(encoded b: [UInt8]) throws(StateCodingError) {
            guard b.count == Self.size else { throw .badSectionSize(name: Self.name, expected: Self.size, got: b.count) }
            var r = ByteReader(b)
            guard let macBytes = r.bytes(6), let reserved = r.u16(), let page = r.u64(),
                  let tc = r.u32(), let rp = r.u32(), let vcpu = r.u32(), let ann = r.u32(),
                  let tf = r.u64(), let tb = r.u64(), let rf = r.u64(), let rb = r.u64(), let rd = r.u64() else {
                throw .truncated
            }
            guard reserved == 0 else { throw .reservedNotZero("section net") }
            guard let mac = MACAddress(bytes: Array(macBytes)) else { throw .badValue("the NIC's MAC (not a unicast address)") }
            guard page % GuestPhysicalAddress.pageSize == 0, page < 1 << 32 else {
                throw .badValue("the net page address 0x\(String(page, radix: 16))")
            }
            guard page != 0 || (tc == 0 && rp == 0) else { throw .badValue("ring indices of a NIC that was never attached") }
            guard vcpu < UInt32(Machine.maximumVCPUs) else { throw .badValue("the NIC's vCPU \(vcpu)") }
            self.init(mac: mac, netPage: page, txCons: tc, rxProd: rp, rxVCPU: vcpu, announce: ann,
                      txFrames: tf, txBytes: tb, rxFrames: rf, rxBytes: rb, rxDropped: rd)
        }
    }

    public enum RestoreError: Error, CustomStringConvertible {
        case netPageInvalid(UInt64)
        case vcpuOutOfRange(UInt32, vcpus: Int)
        public var description: String {
            switch self {
            case let .netPageInvalid(gpa):
                return "NIC state: the net page at 0x\(String(gpa, radix: 16)) or its rings are not valid in the received memory"
            case let .vcpuOutOfRange(v, n): return "NIC state: vCPU \(v) attached the NIC, this VM has \(n) vCPUs"
            }
        }
    }

    /// The state now; the NIC must be quiesced (the VM paused) for it to match guest memory.
    public func savedState() -> State {
        lock.withLock {
            State(mac: macValue, netPage: page?.gpa.raw ?? 0, txCons: txCons, rxProd: rxProd, rxVCPU: rxVCPUValue,
                  announce: announce, txFrames: UInt64(counters.txFrames), txBytes: UInt64(counters.txBytes),
                  rxFrames: UInt64(counters.rxFrames), rxBytes: UInt64(counters.rxBytes),
                  rxDropped: UInt64(counters.rxDropped))
        }
    }

    /// Takes `state` into this (not yet attached) NIC: the MAC, and when it was attached the
    /// net page and rings (validated against `pvRanges` as NET_ATTACH does), the host's
    /// indices, and `announce + 1`, all written to the net page so the guest sees that it
    /// moved (§5.2) and announces itself. `vcpuCount` bounds the vCPU to wake.
    func restore(_ state: State, pvRanges: [GuestRange], vcpuCount: Int) throws(RestoreError) {
        guard state.rxVCPU < UInt32(vcpuCount) else { throw .vcpuOutOfRange(state.rxVCPU, vcpus: vcpuCount) }
        lock.lock()
        defer { lock.unlock() }
        macValue = state.mac
        counters.txFrames = Int(clamping: state.txFrames)
        counters.txBytes = Int(clamping: state.txBytes)
        counters.rxFrames = Int(clamping: state.rxFrames)
        counters.rxBytes = Int(clamping: state.rxBytes)
        counters.rxDropped = Int(clamping: state.rxDropped)
        guard state.netPage != 0 else { return }
        guard adoptLocked(gpa: GuestPhysicalAddress(state.netPage), pvRanges: pvRanges) else {
            throw .netPageInvalid(state.netPage)
        }
        txCons = state.txCons
        rxProd = state.rxProd
        rxVCPUValue = state.rxVCPU
        announce = state.announce &+ 1
        counters.attached = true
        // tx_event = tx_cons: the next queued frame kicks; the backend also drains once on resume.
        publishLocked(txEvent: txCons)
    }
}

extension PVNet: StateSaving {
    public func saveState() -> State { savedState() }

    /// The PV ranges come from the PV interface that owns this NIC (restored first, §1.8).
    public func restoreState(_ state: State) throws(MachineError) {
        let ranges = pvRanges()
        do { try restore(state, pvRanges: ranges, vcpuCount: vcpuCount) } catch { throw .restoreMismatch(error.description) }
    }
}
