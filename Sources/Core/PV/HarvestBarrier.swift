import CKVM

/// The host's half of the PV ABI's HARVEST_BARRIER feature (protocol.md §1.5, §2.3): after
/// each generation bump, every vCPU executes a full memory barrier before the host reads a
/// harvested page, so that a guest may skip its own fence for pages it has already logged.
///
/// Implemented with membarrier(2) (MEMBARRIER_CMD_PRIVATE_EXPEDITED): the kernel interrupts
/// every CPU currently running a thread of this process — a vCPU thread inside KVM_RUN,
/// whether the guest runs natively or in KVM's emulator — and runs a full barrier there; a
/// thread that is not running passed through one when it was switched out. One call costs
/// a few microseconds per harvest instead of one fence per guest page write.
public enum HarvestBarrier {
    /// True when this process registered for expedited membarrier (Linux 4.14+). Only then is
    /// HARVEST_BARRIER advertised to guests. Registered once, on first use.
    public static let isAvailable: Bool = ckvm_membarrier_register() == 0

    /// Makes every running vCPU execute a full barrier. False when that could not be done
    /// (not available, or the kernel refused): the caller must then not trust a guest that
    /// relies on the barrier.
    static func run() -> Bool {
        isAvailable && ckvm_membarrier() == 0
    }
}
