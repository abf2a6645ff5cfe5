import CKVM

/// The VM-wide platform state KVM keeps (protocol.md §1.8, sections `clock` and `irqchip`):
/// the kvmclock and, with an in-kernel irqchip, the PIC master, PIC slave and IOAPIC. Kernel
/// structs travel as their x86-64 KVM API 12 bytes.
extension VirtualMachine: StateSaving {
    public struct State: Equatable, Sendable {
        public var clock: ClockState
        /// nil without an in-kernel irqchip.
        public var irqChips: IRQChipState?

        public init(clock: ClockState, irqChips: IRQChipState?) { self.clock = clock; self.irqChips = irqChips }
    }

    /// `struct kvm_clock_data`.
    public struct ClockState: StateSection {
        public static let tag: UInt16 = 2
        public static let name = "clock"
        public var bytes: [UInt8]

        init(_ data: kvm_clock_data) { bytes = RawStruct.bytes(data) }
        init(bytes: [UInt8]) { self.bytes = bytes }

        public func encoded() -> [UInt8] { bytes }

        public init(encoded bytes: [UInt8]) throws(StateCodingError) {
            try RawStruct.checkSize(bytes, of: kvm_clock_data.self, name: Self.name)
            self.bytes = bytes
        }

        var data: kvm_clock_data { RawStruct.value(bytes, as: kvm_clock_data.self, zero: kvm_clock_data()) }
    }

    /// 3 × `struct kvm_irqchip`: PIC master, PIC slave, IOAPIC.
    public struct IRQChipState: StateSection {
        public static let tag: UInt16 = 3
        public static let name = "irqchip"
        static let chipCount = 3
        public var chips: [[UInt8]]

        init(_ chips: [kvm_irqchip]) { self.chips = chips.map { RawStruct.bytes($0) } }
        init(chips: [[UInt8]]) { self.chips = chips }

        public func encoded() -> [UInt8] { chips.flatMap { $0 } }

        public init(encoded bytes: [UInt8]) throws(StateCodingError) {
            let size = MemoryLayout<kvm_irqchip>.size
            guard bytes.count == Self.chipCount * size else {
                throw .badSectionSize(name: Self.name, expected: Self.chipCount * size, got: bytes.count)
            }
            chips = (0..<Self.chipCount).map { Array(bytes[($0 * size)..<(($0 + 1) * size)]) }
        }
    }

    public func saveState() throws(MachineError) -> State {
        do {
            let chips = irqChipCreated
                ? IRQChipState(try (0..<UInt32(IRQChipState.chipCount)).map { (i) throws(KVMError) in try irqChip(i) })
                : nil
            return State(clock: ClockState(try clock()), irqChips: chips)
        } catch { throw .kvm(error) }
    }

    /// The irqchip first (vCPUs' LAPICs are restored after it), then the clock — the order
    /// of protocol.md §1.8.
    public func restoreState(_ state: State) throws(MachineError) {
        guard (state.irqChips != nil) == irqChipCreated else {
            throw .restoreMismatch("in-kernel irqchip presence differs between the state and this VM")
        }
        do {
            for bytes in state.irqChips?.chips ?? [] {
                try setIRQChip(RawStruct.value(bytes, as: kvm_irqchip.self, zero: kvm_irqchip()))
            }
            try setClock(state.clock.data)
        } catch { throw .kvm(error) }
    }
}
