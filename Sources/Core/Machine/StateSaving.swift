/// The lifecycle seam of saved state (style.md "Firecracker ... Persist"): every component
/// of a machine whose state must survive a save/restore or a migration — each vCPU, the VM's
/// platform devices (clock, irqchip), the PV interface, the serial port, and every future
/// device — conforms, so `Machine.saveState()` / `restore(_:)` only call each component in
/// turn and never reach into one. Runtime-only things (guest memory, the console sink) are
/// never part of a state: they come in when the component is built.
///
/// Both calls need the VM paused (or not started); `Machine` checks that once for all.
public protocol StateSaving: AnyObject {
    associatedtype State: Equatable & Sendable
    /// The component's state now.
    func saveState() throws(MachineError) -> State
    /// Puts the component into `state`, which was decoded from untrusted bytes: a state this
    /// component cannot take is a `MachineError.restoreMismatch`, never a crash.
    func restoreState(_ state: State) throws(MachineError)
}

/// A value that travels as one section of the machine-state container (protocol.md §1.8):
/// its tag there, its name in errors, and the exact bytes of its payload. Decoding treats
/// the bytes as hostile (sizes, reserved fields); `init(encoded: encoded())` gives back an
/// equal value, and each conformer has a golden-byte test (Tests/CoreTests/StateSavingTests.swift).
public protocol StateSection: Equatable, Sendable {
    /// The section's tag in the machine-state container.
    static var tag: UInt16 { get }
    /// The section's name in protocol.md §1.8 and in errors.
    static var name: String { get }
    /// The section's payload.
    func encoded() -> [UInt8]
    init(encoded bytes: [UInt8]) throws(StateCodingError)
}

extension StateWriter {
    /// Appends `value` as its section.
    mutating func section<S: StateSection>(_ value: S) { section(S.tag, value.encoded()) }
}

extension StateReader {
    /// The section of type `S`, decoded; nil when the container has none.
    func section<S: StateSection>(_: S.Type) throws(StateCodingError) -> S? {
        guard let bytes = sections[S.tag] else { return nil }
        return try S(encoded: Array(bytes))
    }

    /// The section of type `S`, which the container must hold.
    func required<S: StateSection>(_: S.Type) throws(StateCodingError) -> S {
        guard let value = try section(S.self) else { throw .missingSection(S.name) }
        return value
    }
}
