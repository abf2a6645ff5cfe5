import CKVM

/// KVM dirty logging per memory slot.
extension Machine {
    /// Re-registers every slot with KVM_MEM_LOG_DIRTY_PAGES on or off.
    func setDirtyLogging(_ on: Bool) throws(KVMError) {
        for region in memory.regions {
            try vm.setMemorySlot(region.slot, guestAddress: region.range.start, size: region.range.size,
                                 hostAddress: region.host, logDirtyPages: on)
        }
    }

    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: KVM_GET_DIRTY_LOG stops re-protecting pages and
    /// KVM_CLEAR_DIRTY_LOG does it for exactly the pages harvested. Enabled once per VM.
    func enableManualDirtyProtect() throws(KVMError) {
        guard !manualProtectEnabled.value else { return }
        try vm.enableCapability(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, UInt64(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
        manualProtectEnabled.withLock { $0 = true }
    }
}
