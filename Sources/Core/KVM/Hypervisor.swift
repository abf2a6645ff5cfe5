import CKVM
import Glibc

/// /dev/kvm: the system-level KVM handle. Creates VMs and answers what the host supports.
public final class Hypervisor: @unchecked Sendable {
    public static let defaultPath = "/dev/kvm"
    let fd: KVMFileDescriptor
    public let path: String

    /// Opens /dev/kvm and checks the API version.
    public init(path: String = Hypervisor.defaultPath) throws(KVMError) {
        do { fd = try KVMFileDescriptor.open(path) } catch { throw .deviceUnavailable(path: path, errno: error.rawValue) }
        self.path = path
        let version = try fd.ioctl("KVM_GET_API_VERSION", CKVM_GET_API_VERSION, value: 0)
        guard version == 12 else { throw .unsupportedAPIVersion(version) }
    }

    /// True when `path` exists (tests use this to decide whether to skip).
    public static func isPresent(path: String = Hypervisor.defaultPath) -> Bool {
        access(path, F_OK) == 0
    }

    /// KVM_CHECK_EXTENSION: 0 when absent, else the capability's value (often 1).
    public func capability(_ cap: Int32) -> Int {
        (try? fd.ioctl("KVM_CHECK_EXTENSION", CKVM_CHECK_EXTENSION, value: UInt(cap))) ?? 0
    }

    /// Size of the per-vCPU `kvm_run` mapping.
    func vcpuMmapSize() throws(KVMError) -> Int {
        try fd.ioctl("KVM_GET_VCPU_MMAP_SIZE", CKVM_GET_VCPU_MMAP_SIZE, value: 0)
    }

    /// KVM_GET_SUPPORTED_CPUID, growing the buffer while KVM says E2BIG.
    public func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        try fd.ioctlList("KVM_GET_SUPPORTED_CPUID", CKVM_GET_SUPPORTED_CPUID, count: \kvm_cpuid2.nent,
                         of: kvm_cpuid_entry2.self, capacity: 128, limit: 4096)
    }

    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM reports as saveable for a vCPU.
    public func saveableMSRs() throws(KVMError) -> [UInt32] {
        try fd.ioctlList("KVM_GET_MSR_INDEX_LIST", CKVM_GET_MSR_INDEX_LIST, count: \kvm_msr_list.nmsrs,
                         of: UInt32.self, capacity: 256, limit: 16384)
    }

    /// KVM_CREATE_VM.
    public func makeVirtualMachine() throws(KVMError) -> VirtualMachine {
        let raw = try fd.ioctl("KVM_CREATE_VM", CKVM_CREATE_VM, value: 0)
        return VirtualMachine(hypervisor: self, fd: KVMFileDescriptor(owning: Int32(raw)))
    }
}
