import CKVM

/// A paused VM's complete CPU and platform state (guest memory travels separately):
/// every vCPU, the KVM clock, and the in-kernel irqchip when one exists. Plain value;
/// `encoded()` / `init(encoded:)` per protocol.md §1.8.
public struct MachineState: Equatable, Sendable {
    public var memorySize: UInt64
    public var vcpus: [VCPUState]
    var clock: [UInt8]
    /// PIC master, PIC slave, IOAPIC (`kvm_irqchip` bytes), when an irqchip was created.
    var irqChips: [[UInt8]]?
    /// The PV interface: control page, announced ABI, balloon map.
    public var pv: PVInterface.State?

    static let magic = Array("PVMS".utf8)
    static let formatVersion: UInt16 = 1
    static let memoryTag: UInt16 = 1, clockTag: UInt16 = 2, irqChipTag: UInt16 = 3, pvTag: UInt16 = 4
    static let vcpuTagBase: UInt16 = 0x100
    public static let maximumVCPUs = 255

    public func encoded() -> [UInt8] {
        var w = StateWriter(magic: Self.magic, version: Self.formatVersion)
        var m: [UInt8] = []
        StateWriter.put(&m, memorySize, 8)
        w.section(Self.memoryTag, m)
        w.section(Self.clockTag, clock)
        if let irqChips { w.section(Self.irqChipTag, irqChips.flatMap { $0 }) }
        if let pv { w.section(Self.pvTag, pv.encoded()) }
        for (i, v) in vcpus.enumerated() { w.section(Self.vcpuTagBase + UInt16(i), v.encoded()) }
        return w.bytes
    }

    public init(encoded bytes: [UInt8]) throws(StateCodingError) {
        let known = Set([Self.memoryTag, Self.clockTag, Self.irqChipTag, Self.pvTag])
            .union((0..<Self.maximumVCPUs).map { Self.vcpuTagBase + UInt16($0) })
        let r = try StateReader(bytes, magic: Self.magic, version: Self.formatVersion, knownTags: known)
        memorySize = StateReader.le(try r.value(Self.memoryTag, "memory", as: UInt64.self), 0, 8)
        clock = try r.value(Self.clockTag, "clock", as: kvm_clock_data.self)
        if let chips = r.sections[Self.irqChipTag] {
            let size = MemoryLayout<kvm_irqchip>.size
            guard chips.count == 3 * size else { throw .badSectionSize(name: "irqchip", expected: 3 * size, got: chips.count) }
            irqChips = (0..<3).map { Array(chips.dropFirst($0 * size).prefix(size)) }
        } else { irqChips = nil }
        pv = try r.sections[Self.pvTag].map { (b) throws(StateCodingError) in try PVInterface.State(encoded: Array(b)) }
        var vcpus: [VCPUState] = []
        while let v = r.sections[Self.vcpuTagBase + UInt16(vcpus.count)] {
            vcpus.append(try VCPUState(encoded: Array(v)))
        }
        guard !vcpus.isEmpty else { throw .missingSection("vcpu 0") }
        guard r.sections.count == 2 + (irqChips == nil ? 0 : 1) + (pv == nil ? 0 : 1) + vcpus.count else {
            throw .missingSection("vcpu \(vcpus.count) (vCPU sections must be numbered without gaps)")
        }
        self.vcpus = vcpus
    }

    init(memorySize: UInt64, vcpus: [VCPUState], clock: [UInt8], irqChips: [[UInt8]]?, pv: PVInterface.State?) {
        self.memorySize = memorySize; self.vcpus = vcpus; self.clock = clock; self.irqChips = irqChips; self.pv = pv
    }
}
