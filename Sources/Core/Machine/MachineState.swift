import CKVM

/// A paused VM's complete CPU and platform state (guest memory travels separately): every
/// vCPU, the VM's clock and irqchip, the PV interface, the serial port and the PV NIC — one `StateSaving`
/// component each. Plain value; `encoded()` / `init(encoded:)` per protocol.md §1.8.
public struct MachineState: Equatable, Sendable {
    public var memorySize: UInt64
    public var vcpus: [VCPUState]
    /// The kvmclock and, when one was created, the in-kernel irqchip.
    public var platform: VirtualMachine.State
    /// The PV interface: control page, announced ABI, balloon map.
    public var pv: PVInterface.State?
    /// The serial port's registers; nil in a format-1 blob (the port then keeps its
    /// power-on values).
    public var serial: SerialPort.State?
    /// The PV NIC, when the VM has one (format 4).
    public var net: PVNet.State?

    /// The VIF pages the vCPUs had registered when the state was saved (MSR 0x4b564d10, §1.6).
    public var registeredVIFPages: [GuestPhysicalAddress] {
        vcpus.compactMap { v in
            v.msrs.first { $0.index == PVM.vifMSR }.flatMap { PVM.vifPage(msrValue: $0.value) }.map(GuestPhysicalAddress.init)
        }
    }

    /// `kvm_clock_data` bytes.
    var clock: [UInt8] { platform.clock.bytes }
    /// PIC master, PIC slave, IOAPIC (`kvm_irqchip` bytes), when an irqchip was created.
    var irqChips: [[UInt8]]? { platform.irqChips?.chips }

    static let magic = Array("PVMS".utf8)
    /// 2: adds the serial section (tag 5); 3: adds the vCPU count (tag 6); 4: adds the PV NIC
    /// (tag 7). Formats 1–3 are still read. A blob without a NIC is written as format 3, so a
    /// VM without one still moves to a format-3 reader (protocol.md §1.8).
    static let formatVersion: UInt16 = 4
    var writtenVersion: UInt16 { net == nil ? 3 : Self.formatVersion }
    static let readableVersions: ClosedRange<UInt16> = 1...4
    static let memoryTag: UInt16 = 1
    static let vcpuCountTag: UInt16 = 6
    static let vcpuTagBase: UInt16 = 0x100
    public static let maximumVCPUs = 255

    public func encoded() -> [UInt8] {
        var w = StateWriter(magic: Self.magic, version: writtenVersion)
        var m = ByteWriter()
        m.u64(memorySize)
        w.section(Self.memoryTag, m.bytes)
        var n = ByteWriter()
        n.u32(UInt32(vcpus.count))
        w.section(Self.vcpuCountTag, n.bytes)
        w.section(platform.clock)
        if let chips = platform.irqChips { w.section(chips) }
        if let pv { w.section(pv) }
        if let serial { w.section(serial) }
        if let net { w.section(net) }
        for (i, v) in vcpus.enumerated() { w.section(Self.vcpuTagBase + UInt16(i), v.encoded()) }
        return w.bytes
    }

    public init(encoded bytes: [UInt8]) throws(StateCodingError) {
        let known = Set([Self.memoryTag, Self.vcpuCountTag, VirtualMachine.ClockState.tag, VirtualMachine.IRQChipState.tag,
                         PVInterface.State.tag, SerialPort.State.tag, PVNet.State.tag])
            .union((0..<Self.maximumVCPUs).map { Self.vcpuTagBase + UInt16($0) })
        let r = try StateReader(bytes, magic: Self.magic, versions: Self.readableVersions, knownTags: known)
        if r.version < 2, r.sections[SerialPort.State.tag] != nil { throw .unknownSection(SerialPort.State.tag) }
        if r.version < 3, r.sections[Self.vcpuCountTag] != nil { throw .unknownSection(Self.vcpuCountTag) }
        if r.version < 4, r.sections[PVNet.State.tag] != nil { throw .unknownSection(PVNet.State.tag) }
        memorySize = ByteReader(try r.value(Self.memoryTag, "memory", as: UInt64.self)).integer(at: 0) ?? 0
        platform = VirtualMachine.State(clock: try r.required(VirtualMachine.ClockState.self),
                                        irqChips: try r.section(VirtualMachine.IRQChipState.self))
        pv = try r.section(PVInterface.State.self)
        serial = try r.section(SerialPort.State.self)
        net = try r.section(PVNet.State.self)
        var vcpus: [VCPUState] = []
        while let v = r.sections[Self.vcpuTagBase + UInt16(vcpus.count)] {
            vcpus.append(try VCPUState(encoded: Array(v)))
        }
        guard !vcpus.isEmpty else { throw .missingSection("vcpu 0") }
        if let net, Int(net.rxVCPU) >= vcpus.count {
            throw .badValue("section net naming vCPU \(net.rxVCPU) of \(vcpus.count)")
        }
        for (i, v) in vcpus.enumerated() where v.id != UInt32(i) {
            throw .badValue("section vcpu \(i) holding the state of vCPU \(v.id)")
        }
        // Format 3 states the count, so a missing last vCPU is caught, not taken for a smaller VM.
        if r.version >= 3 {
            let count: UInt32 = ByteReader(try r.value(Self.vcpuCountTag, "vcpus", as: UInt32.self)).integer(at: 0) ?? 0
            guard count == vcpus.count else {
                throw .badValue("a vCPU count of \(count) with \(vcpus.count) vCPU sections")
            }
        }
        let optional = [platform.irqChips != nil, pv != nil, serial != nil, net != nil, r.version >= 3].filter { $0 }.count
        guard r.sections.count == 2 + optional + vcpus.count else {
            throw .missingSection("vcpu \(vcpus.count) (vCPU sections must be numbered without gaps)")
        }
        self.vcpus = vcpus
    }

    public init(memorySize: UInt64, vcpus: [VCPUState], platform: VirtualMachine.State, pv: PVInterface.State?,
                serial: SerialPort.State?, net: PVNet.State? = nil) {
        self.memorySize = memorySize; self.vcpus = vcpus; self.platform = platform; self.pv = pv; self.serial = serial
        self.net = net
    }

    /// From raw kernel-struct bytes (tests): the sizes are the caller's to get right.
    init(memorySize: UInt64, vcpus: [VCPUState], clock: [UInt8], irqChips: [[UInt8]]?, pv: PVInterface.State?,
         serial: SerialPort.State? = nil, net: PVNet.State? = nil) {
        self.init(memorySize: memorySize, vcpus: vcpus,
                  platform: VirtualMachine.State(clock: VirtualMachine.ClockState(bytes: clock),
                                                 irqChips: irqChips.map { VirtualMachine.IRQChipState(chips: $0) }),
                  pv: pv, serial: serial, net: net)
    }
}
