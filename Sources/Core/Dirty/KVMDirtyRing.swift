import CKVM
import Glibc

/// One vCPU's KVM dirty ring (KVM_CAP_DIRTY_LOG_RING): `kvm_dirty_gfn` entries KVM pushes as
/// the vCPU dirties pages, harvested by the VMM without stopping it.
///
/// Optional and, on PVM hosts, unreliable (platform-facts.md: emulated stores push an entry
/// each and a full ring inside an emulation batch loses pages), so the machine guards it
/// with a watchdog and `DirtyTracker` never trusts it alone there.
final class KVMDirtyRing: @unchecked Sendable {
    static let flagDirty: UInt32 = 1 << 0
    static let flagReset: UInt32 = 1 << 1
    static let entrySize = MemoryLayout<kvm_dirty_gfn>.stride // 16

    private let base: UnsafeMutableRawPointer
    let entries: UInt32
    private var fetch: UInt32 = 0 // guarded by the machine's ring lock

    init(vcpu: VCPU, entries: UInt32) throws(KVMError) {
        self.entries = entries
        let size = Int(entries) * Self.entrySize
        let offset = off_t(CKVM_DIRTY_LOG_PAGE_OFFSET) * off_t(getpagesize())
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.fd.raw, offset), p != MAP_FAILED else {
            throw .mmapFailed(what: "the KVM dirty ring of vCPU \(vcpu.id)", errno: errno)
        }
        base = p
    }

    deinit { munmap(base, Int(entries) * Self.entrySize) }

    /// Moves every dirty entry into `bitmap` (by RAM page index) and marks it for reset.
    /// Entries naming an unknown slot or an offset outside it are dropped and counted.
    /// Returns (collected, invalid). The caller issues KVM_RESET_DIRTY_RINGS afterwards.
    func collect(into bitmap: inout PageBitmap, memory: GuestMemory) -> (collected: Int, invalid: Int) {
        let offsets = memory.regionPageOffsets
        var collected = 0, invalid = 0
        while collected + invalid < Int(entries) {
            // Sound: the index is reduced modulo `entries`; the mapping holds `entries` entries.
            let entry = base + Int(fetch % entries) * Self.entrySize
            let flags = ckvm_load_acquire_u32(entry)
            guard flags & Self.flagDirty != 0 else { break }
            let slot = Int(entry.load(fromByteOffset: 4, as: UInt32.self))
            let offset = entry.load(fromByteOffset: 8, as: UInt64.self)
            if slot < memory.regions.count, offset < UInt64(memory.regions[slot].pageCount) {
                bitmap.insert(offsets[slot] + Int(offset))
                collected += 1
            } else {
                invalid += 1
            }
            ckvm_store_release_u32(entry, Self.flagReset)
            fetch &+= 1
        }
        return (collected, invalid)
    }
}

extension VirtualMachine {
    /// KVM_RESET_DIRTY_RINGS: re-protects the pages of every entry marked for reset.
    func resetDirtyRings() throws(KVMError) {
        try fd.ioctl("KVM_RESET_DIRTY_RINGS", CKVM_RESET_DIRTY_RINGS, value: 0)
    }
}
