import CKVM

/// Everything needed to resume one 64-bit vCPU elsewhere: general and special registers,
/// FPU/XSAVE and XCRs, the saveable MSRs (plus PVM's VIF MSR), vCPU events, MP state,
/// debug registers and, with an in-kernel irqchip, the LAPIC.
///
/// A plain value. Kernel structs are kept as their bytes (the x86-64 KVM API 12 layouts),
/// so encoding is exact and independent of Swift's view of C unions; `encoded()` /
/// `init(encoded:)` is the wire form (protocol.md §1.8).
public struct VCPUState: Equatable, Sendable {
    public var id: UInt32
    var regs: [UInt8]
    var sregs: [UInt8]
    var fpu: [UInt8]
    var xsave: [UInt8]?
    var xcrs: [UInt8]?
    public var msrs: [MSR]
    var events: [UInt8]
    public var mpState: UInt32
    var debugRegs: [UInt8]
    var lapic: [UInt8]?
    /// What the guest made of this vCPU (`VCPUThread.Activity`): 0 active, 1 awaiting
    /// VCPU_START, 2 halted. Format 2, tag 12; format 1 blobs are active.
    public var activity: UInt32 = 0

    public var registers: kvm_regs { RawStruct.value(regs, as: kvm_regs.self, zero: kvm_regs()) }
    public var specialRegisters: kvm_sregs { RawStruct.value(sregs, as: kvm_sregs.self, zero: kvm_sregs()) }
    public var hasLAPIC: Bool { lapic != nil }

    /// Which optional parts a vCPU's state holds on this host and VM.
    struct Layout: Sendable {
        /// The saveable MSRs (plus PVM's VIF MSR on PVM hosts).
        var msrIndices: [UInt32]
        /// With an in-kernel irqchip.
        var withLAPIC: Bool
        var xsave: Bool
        var xcrs: Bool
    }

    /// Captures `vcpu`'s state. The vCPU must not be running (VCPUThread guarantees it).
    static func capture(_ vcpu: VCPU, _ layout: Layout) throws(KVMError) -> VCPUState {
        let (msrIndices, withLAPIC, hasXSAVE, hasXCRs) = (layout.msrIndices, layout.withLAPIC, layout.xsave, layout.xcrs)
        return VCPUState(
            id: vcpu.id,
            regs: RawStruct.bytes(try vcpu.registers()),
            sregs: RawStruct.bytes(try vcpu.specialRegisters()),
            fpu: RawStruct.bytes(try vcpu.fpu()),
            xsave: hasXSAVE ? try vcpu.xsave() : nil,
            xcrs: hasXCRs ? RawStruct.bytes(try vcpu.xcrs()) : nil,
            msrs: try vcpu.readMSRs(msrIndices),
            events: RawStruct.bytes(try vcpu.events()),
            mpState: try vcpu.mpState(),
            debugRegs: RawStruct.bytes(try vcpu.debugRegisters()),
            lapic: withLAPIC ? RawStruct.bytes(try vcpu.lapic()) : nil)
    }

    /// Loads this state into `vcpu` (whose CPUID is already set). Order matters on PVM
    /// (platform-facts): special registers, general registers, then MSRs. Returns the MSRs
    /// the kernel refused, which the caller reports.
    func apply(to vcpu: VCPU) throws(KVMError) -> [UInt32] {
        try vcpu.setSpecialRegisters(specialRegisters)
        try vcpu.setRegisters(registers)
        try vcpu.setFPU(RawStruct.value(fpu, as: kvm_fpu.self, zero: kvm_fpu()))
        if let xsave { try vcpu.setXSAVE(xsave) }
        if let xcrs { try vcpu.setXCRs(RawStruct.value(xcrs, as: kvm_xcrs.self, zero: kvm_xcrs())) }
        // The async-page-fault MSR cannot be written back as 0 on PVM (it stops the batch).
        let restorable = msrs.filter { !($0.index == PVM.asyncPageFaultMSR && $0.value == 0) }
        let refused = try vcpu.writeMSRs(restorable)
        if let lapic { try vcpu.setLAPIC(RawStruct.value(lapic, as: kvm_lapic_state.self, zero: kvm_lapic_state())) }
        try vcpu.setMPState(mpState)
        try vcpu.setEvents(RawStruct.value(events, as: kvm_vcpu_events.self, zero: kvm_vcpu_events()))
        try vcpu.setDebugRegisters(RawStruct.value(debugRegs, as: kvm_debugregs.self, zero: kvm_debugregs()))
        return refused
    }

    // MARK: Encoding (protocol.md §1.8)

    static let magic = Array("PVCS".utf8)
    static let formatVersion: UInt16 = 2
    static let activityLimit: UInt32 = 2
    enum Tag: UInt16, CaseIterable {
        case id = 1, regs, sregs, fpu, xsave, xcrs, msrs, events, mpState, debugRegs, lapic, activity
    }

    public func encoded() -> [UInt8] {
        var w = StateWriter(magic: Self.magic, version: Self.formatVersion)
        var idBytes = ByteWriter()
        idBytes.u32(id)
        w.section(Tag.id.rawValue, idBytes.bytes)
        w.section(Tag.regs.rawValue, regs)
        w.section(Tag.sregs.rawValue, sregs)
        w.section(Tag.fpu.rawValue, fpu)
        if let xsave { w.section(Tag.xsave.rawValue, xsave) }
        if let xcrs { w.section(Tag.xcrs.rawValue, xcrs) }
        var m = ByteWriter(capacity: 16 * msrs.count)
        for msr in msrs {
            m.u32(msr.index)
            m.u32(0)
            m.u64(msr.value)
        }
        w.section(Tag.msrs.rawValue, m.bytes)
        w.section(Tag.events.rawValue, events)
        var mp = ByteWriter()
        mp.u32(mpState)
        w.section(Tag.mpState.rawValue, mp.bytes)
        w.section(Tag.debugRegs.rawValue, debugRegs)
        if let lapic { w.section(Tag.lapic.rawValue, lapic) }
        var a = ByteWriter()
        a.u32(activity)
        w.section(Tag.activity.rawValue, a.bytes)
        return w.bytes
    }

    public init(encoded bytes: [UInt8]) throws(StateCodingError) {
        let r = try StateReader(bytes, magic: Self.magic, versions: 1...Self.formatVersion,
                                knownTags: Set(Tag.allCases.map(\.rawValue)))
        let idBytes = try r.value(Tag.id.rawValue, "id", as: UInt32.self)
        id = ByteReader(idBytes).integer(at: 0) ?? 0  // the size was checked: always present
        regs = try r.value(Tag.regs.rawValue, "regs", as: kvm_regs.self)
        sregs = try r.value(Tag.sregs.rawValue, "sregs", as: kvm_sregs.self)
        fpu = try r.value(Tag.fpu.rawValue, "fpu", as: kvm_fpu.self)
        if let x = r.sections[Tag.xsave.rawValue] {
            guard x.count >= MemoryLayout<kvm_xsave>.size, x.count <= 1 << 20 else {
                throw .badSectionSize(name: "xsave", expected: MemoryLayout<kvm_xsave>.size, got: x.count)
            }
            xsave = Array(x)
        } else { xsave = nil }
        xcrs = r.sections[Tag.xcrs.rawValue] == nil ? nil : try r.value(Tag.xcrs.rawValue, "xcrs", as: kvm_xcrs.self)
        let m = try r.required(Tag.msrs.rawValue, "msrs")
        guard m.count % 16 == 0 else { throw .badSectionSize(name: "msrs", expected: (m.count / 16) * 16, got: m.count) }
        var entries = ByteReader(m)
        var msrs: [MSR] = []
        while let index = entries.u32(), let reserved = entries.u32(), let value = entries.u64() {
            guard reserved == 0 else { throw .reservedNotZero("MSR 0x\(String(index, radix: 16))'s entry") }
            msrs.append(MSR(index: index, value: value))
        }
        self.msrs = msrs
        events = try r.value(Tag.events.rawValue, "events", as: kvm_vcpu_events.self)
        mpState = ByteReader(try r.value(Tag.mpState.rawValue, "mp_state", as: UInt32.self)).integer(at: 0) ?? 0
        debugRegs = try r.value(Tag.debugRegs.rawValue, "debugregs", as: kvm_debugregs.self)
        lapic = r.sections[Tag.lapic.rawValue] == nil ? nil
            : try r.value(Tag.lapic.rawValue, "lapic", as: kvm_lapic_state.self)
        // Format 2 always carries the activity; format 1 has none (its vCPUs were active).
        if r.version >= 2 {
            activity = ByteReader(try r.value(Tag.activity.rawValue, "activity", as: UInt32.self)).integer(at: 0) ?? 0
            guard activity <= Self.activityLimit else { throw .badValue("vCPU activity \(activity)") }
        } else if r.sections[Tag.activity.rawValue] != nil {
            throw .badValue("an activity section in a format-1 vCPU state")
        }
    }

    init(id: UInt32, regs: [UInt8], sregs: [UInt8], fpu: [UInt8], xsave: [UInt8]?, xcrs: [UInt8]?,
         msrs: [MSR], events: [UInt8], mpState: UInt32, debugRegs: [UInt8], lapic: [UInt8]?) {
        self.id = id; self.regs = regs; self.sregs = sregs; self.fpu = fpu; self.xsave = xsave
        self.xcrs = xcrs; self.msrs = msrs; self.events = events; self.mpState = mpState
        self.debugRegs = debugRegs; self.lapic = lapic
    }
}
