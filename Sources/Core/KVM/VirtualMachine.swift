import CKVM
import Glibc

/// A KVM VM file descriptor: memory slots, vCPU creation, dirty log, clock, irqchip.
public final class VirtualMachine: @unchecked Sendable {
    public let hypervisor: Hypervisor
    let fd: KVMFileDescriptor
    private var hasIRQChip = false

    init(hypervisor: Hypervisor, fd: KVMFileDescriptor) {
        self.hypervisor = hypervisor
        self.fd = fd
    }

    /// KVM_SET_USER_MEMORY_REGION. `hostAddress` must stay mapped while the slot exists.
    public func setMemorySlot(_ slot: UInt32, guestAddress: GuestPhysicalAddress, size: UInt64,
                              hostAddress: UnsafeMutableRawPointer, logDirtyPages: Bool) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: logDirtyPages ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0,
            guest_phys_addr: guestAddress.raw, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: hostAddress)))
        try fd.ioctl("KVM_SET_USER_MEMORY_REGION", CKVM_SET_USER_MEMORY_REGION, &region)
    }

    /// KVM_GET_DIRTY_LOG for one slot into `bitmap` (one bit per page, LSB first): the pages
    /// written since the last call, which the call clears. `pageCount` is the slot's size in
    /// pages; `bitmap` is resized to the slot only when it does not fit (a caller that keeps
    /// it across harvests allocates, and faults its pages in, once).
    public func dirtyLog(slot: UInt32, pageCount: Int, into bitmap: inout [UInt64]) throws(KVMError) {
        // KVM writes ceil(pages/64) u64 words into the bitmap, which holds exactly that.
        let words = (pageCount + 63) / 64
        if bitmap.count != words { bitmap = [UInt64](repeating: 0, count: words) }
        var log = kvm_dirty_log()
        log.slot = slot
        try fd.ioctl("KVM_GET_DIRTY_LOG", CKVM_GET_DIRTY_LOG, &log, buffer: &bitmap) { $0.dirty_bitmap = $1 }
    }

    /// KVM_CLEAR_DIRTY_LOG (manual-protect mode): re-protects the pages set in `bitmap`'s words
    /// `words` (`bitmap` is the slot's, from page 0), so their next write is logged again; the
    /// kernel copies in and walks just that span. KVM wants the span to start
    /// on a 64-page boundary (a word does) and to be a multiple of 64 pages unless it ends
    /// at the slot's end, which clipping the last word to `pageCount` gives.
    public func clearDirtyLog(slot: UInt32, pageCount: Int, bitmap: inout [UInt64], words: Range<Int>) throws(KVMError) {
        precondition(words.lowerBound >= 0 && words.upperBound <= min(bitmap.count, (pageCount + 63) / 64),
                     "clear span outside the slot's bitmap")
        guard !words.isEmpty else { return }
        var clear = kvm_clear_dirty_log()
        clear.slot = slot
        clear.first_page = UInt64(words.lowerBound * 64)
        clear.num_pages = UInt32(min(pageCount, words.upperBound * 64) - words.lowerBound * 64)
        // Sound: the pointer is to word `words.lowerBound` of `bitmap`, pinned for the call, and
        // KVM reads ceil(num_pages/64) words from it: `words.count`, all inside `bitmap`.
        let result = bitmap.withUnsafeMutableBufferPointer { all in
            clear.dirty_bitmap = UnsafeMutableRawPointer(all.baseAddress! + words.lowerBound)
            return Result { () throws(KVMError) in try fd.ioctl("KVM_CLEAR_DIRTY_LOG", CKVM_CLEAR_DIRTY_LOG, &clear) }
        }
        _ = try result.get()
    }

    /// KVM_ENABLE_CAP on the VM.
    public func enableCapability(_ cap: Int32, _ arg0: UInt64 = 0) throws(KVMError) {
        var enable = kvm_enable_cap()
        enable.cap = UInt32(cap)
        enable.args.0 = arg0
        try fd.ioctl("KVM_ENABLE_CAP", CKVM_ENABLE_CAP, &enable)
    }

    /// KVM_SET_TSS_ADDR, needed by VMX for real-mode emulation; a no-op elsewhere.
    func setTSSAddress(_ address: UInt64) throws(KVMError) {
        try fd.ioctl("KVM_SET_TSS_ADDR", CKVM_SET_TSS_ADDR, value: UInt(address))
    }

    /// KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and per-vCPU LAPICs. Call before creating vCPUs.
    public func createIRQChip() throws(KVMError) {
        try fd.ioctl("KVM_CREATE_IRQCHIP", CKVM_CREATE_IRQCHIP, value: 0)
        hasIRQChip = true
    }

    public var irqChipCreated: Bool { hasIRQChip }

    /// KVM_CREATE_VCPU, mapping its run area.
    public func makeVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let raw = try fd.ioctl("KVM_CREATE_VCPU", CKVM_CREATE_VCPU, value: UInt(id))
        let vcpuFD = KVMFileDescriptor(owning: Int32(raw))
        return try VCPU(id: id, fd: vcpuFD, mmapSize: hypervisor.vcpuMmapSize(), vm: self)
    }

    // MARK: VM-wide state

    /// KVM_GET_CLOCK: the kvmclock value, as raw `kvm_clock_data` bytes.
    func clock() throws(KVMError) -> kvm_clock_data {
        var data = kvm_clock_data()
        try fd.ioctl("KVM_GET_CLOCK", CKVM_GET_CLOCK, &data)
        return data
    }

    func setClock(_ data: kvm_clock_data) throws(KVMError) {
        var data = data
        data.flags = 0 // only the clock value is restored; the kernel rejects unknown flags
        try fd.ioctl("KVM_SET_CLOCK", CKVM_SET_CLOCK, &data)
    }

    /// KVM_GET_IRQCHIP for chip 0 (PIC master), 1 (PIC slave), 2 (IOAPIC).
    func irqChip(_ id: UInt32) throws(KVMError) -> kvm_irqchip {
        var chip = kvm_irqchip()
        chip.chip_id = id
        try fd.ioctl("KVM_GET_IRQCHIP", CKVM_GET_IRQCHIP, &chip)
        return chip
    }

    func setIRQChip(_ chip: kvm_irqchip) throws(KVMError) {
        var chip = chip
        try fd.ioctl("KVM_SET_IRQCHIP", CKVM_SET_IRQCHIP, &chip)
    }
}
