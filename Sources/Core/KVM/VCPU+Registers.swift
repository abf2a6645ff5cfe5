import CKVM
import Glibc

/// Typed access to a vCPU's register files. Each returns or takes the kernel's own struct;
/// `VCPUState` turns them into a portable value.
extension VCPU {
    func get<T>(_ name: String, _ request: UInt, _ initial: T) throws(KVMError) -> T {
        var value = initial
        try fd.ioctl(name, request, &value)
        return value
    }

    func set<T>(_ name: String, _ request: UInt, _ value: T) throws(KVMError) {
        var value = value
        try fd.ioctl(name, request, &value)
    }

    public func registers() throws(KVMError) -> kvm_regs { try get("KVM_GET_REGS", CKVM_GET_REGS, kvm_regs()) }
    public func setRegisters(_ r: kvm_regs) throws(KVMError) { try set("KVM_SET_REGS", CKVM_SET_REGS, r) }

    public func specialRegisters() throws(KVMError) -> kvm_sregs { try get("KVM_GET_SREGS", CKVM_GET_SREGS, kvm_sregs()) }
    public func setSpecialRegisters(_ r: kvm_sregs) throws(KVMError) { try set("KVM_SET_SREGS", CKVM_SET_SREGS, r) }

    func fpu() throws(KVMError) -> kvm_fpu { try get("KVM_GET_FPU", CKVM_GET_FPU, kvm_fpu()) }
    func setFPU(_ r: kvm_fpu) throws(KVMError) { try set("KVM_SET_FPU", CKVM_SET_FPU, r) }

    func xcrs() throws(KVMError) -> kvm_xcrs { try get("KVM_GET_XCRS", CKVM_GET_XCRS, kvm_xcrs()) }
    func setXCRs(_ r: kvm_xcrs) throws(KVMError) { try set("KVM_SET_XCRS", CKVM_SET_XCRS, r) }

    func events() throws(KVMError) -> kvm_vcpu_events {
        try get("KVM_GET_VCPU_EVENTS", CKVM_GET_VCPU_EVENTS, kvm_vcpu_events())
    }
    func setEvents(_ r: kvm_vcpu_events) throws(KVMError) {
        var r = r
        // Restore NMI, SIPI and interrupt-shadow state too, and SMM state when the kernel
        // reported it. Payload and triple-fault fields need capabilities pvmigrate does
        // not enable, so they are never set (the kernel would reject the call).
        r.flags = UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR | KVM_VCPUEVENT_VALID_SHADOW)
            | (r.flags & UInt32(KVM_VCPUEVENT_VALID_SMM))
        try set("KVM_SET_VCPU_EVENTS", CKVM_SET_VCPU_EVENTS, r)
    }

    func mpState() throws(KVMError) -> UInt32 {
        try get("KVM_GET_MP_STATE", CKVM_GET_MP_STATE, kvm_mp_state()).mp_state
    }
    func setMPState(_ s: UInt32) throws(KVMError) {
        try set("KVM_SET_MP_STATE", CKVM_SET_MP_STATE, kvm_mp_state(mp_state: s))
    }

    func debugRegisters() throws(KVMError) -> kvm_debugregs {
        try get("KVM_GET_DEBUGREGS", CKVM_GET_DEBUGREGS, kvm_debugregs())
    }
    func setDebugRegisters(_ r: kvm_debugregs) throws(KVMError) {
        try set("KVM_SET_DEBUGREGS", CKVM_SET_DEBUGREGS, r)
    }

    func lapic() throws(KVMError) -> kvm_lapic_state { try get("KVM_GET_LAPIC", CKVM_GET_LAPIC, kvm_lapic_state()) }
    func setLAPIC(_ r: kvm_lapic_state) throws(KVMError) { try set("KVM_SET_LAPIC", CKVM_SET_LAPIC, r) }

    /// The XSAVE area. With KVM_CAP_XSAVE2 (areas larger than 4 KiB, e.g. AMX) the
    /// capability's size is used; otherwise the classic 4 KiB `kvm_xsave`.
    func xsave() throws(KVMError) -> [UInt8] {
        let size2 = vm.hypervisor.capability(KVM_CAP_XSAVE2)
        let size = max(size2, MemoryLayout<kvm_xsave>.size)
        var bytes = [UInt8](repeating: 0, count: size)
        if size2 > 0 {
            try fd.ioctl("KVM_GET_XSAVE2", CKVM_GET_XSAVE2, buffer: &bytes)
        } else {
            try fd.ioctl("KVM_GET_XSAVE", CKVM_GET_XSAVE, buffer: &bytes)
        }
        return bytes
    }

    func setXSAVE(_ bytes: [UInt8]) throws(KVMError) {
        // KVM_SET_XSAVE reads sizeof(kvm_xsave) bytes, or the XSAVE2 size when that
        // capability is on; pad to whichever is larger so the kernel never reads past us.
        let size = max(vm.hypervisor.capability(KVM_CAP_XSAVE2), MemoryLayout<kvm_xsave>.size, bytes.count)
        var padded = bytes + [UInt8](repeating: 0, count: size - bytes.count)
        try fd.ioctl("KVM_SET_XSAVE", CKVM_SET_XSAVE, buffer: &padded)
    }
}
