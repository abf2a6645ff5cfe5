/// A vCPU's part of a saved machine (protocol.md §1.8, sections `vcpu i`): captured and
/// loaded on the vCPU's own thread, between two KVM_RUNs.
extension VCPUThread: StateSaving {
    public func saveState() throws(MachineError) -> VCPUState {
        let layout = stateLayout
        var state: VCPUState
        do { state = try perform { vcpu throws(KVMError) in try VCPUState.capture(vcpu, layout) } }
        catch { throw .kvm(error) }
        state.activity = activity.rawValue
        return state
    }

    /// Loads `state`; the MSRs the kernel refused are in `refusedMSRs` afterwards.
    public func restoreState(_ state: VCPUState) throws(MachineError) {
        guard state.hasLAPIC == stateLayout.withLAPIC else {
            throw .restoreMismatch("in-kernel irqchip presence differs between the state and this VM")
        }
        refusedMSRs.withLock { $0 = [] }
        let refused: [UInt32]
        do { refused = try perform { vcpu throws(KVMError) in try state.apply(to: vcpu) } } catch { throw .kvm(error) }
        refusedMSRs.withLock { $0 = refused }
        setActivity(Activity(rawValue: state.activity) ?? .active) // decoding checked the value
    }
}
