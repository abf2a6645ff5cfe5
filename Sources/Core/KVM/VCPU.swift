import CKVM
import Glibc

/// A KVM vCPU file descriptor and its mmapped `kvm_run` area.
///
/// Register access is in `VCPU+Registers.swift`. A VCPU is driven by exactly one thread
/// at a time (`VCPUThread`); the only cross-thread access is `requestImmediateExit()`.
public final class VCPU: @unchecked Sendable {
    public let id: UInt32
    let fd: KVMFileDescriptor
    unowned let vm: VirtualMachine
    private let runArea: UnsafeMutableRawPointer
    private let runAreaSize: Int

    init(id: UInt32, fd: KVMFileDescriptor, mmapSize: Int, vm: VirtualMachine) throws(KVMError) {
        self.id = id
        self.fd = fd
        self.vm = vm
        guard let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.raw, 0),
              p != MAP_FAILED else {
            throw .mmapFailed(what: "the kvm_run area of vCPU \(id)", errno: errno)
        }
        runArea = p
        runAreaSize = mmapSize
    }

    deinit { munmap(runArea, runAreaSize) }

    /// The shared `kvm_run` structure. Sound: the mapping lives as long as `self` and is at
    /// least sizeof(kvm_run) bytes (KVM_GET_VCPU_MMAP_SIZE guarantees it).
    var run: UnsafeMutablePointer<kvm_run> { runArea.assumingMemoryBound(to: kvm_run.self) }

    /// The bytes of the run area at `offset` (port I/O data lives there).
    func runAreaBytes(offset: Int, count: Int) -> UnsafeMutableRawBufferPointer? {
        guard offset >= 0, count >= 0, offset <= runAreaSize - count else { return nil }
        return UnsafeMutableRawBufferPointer(start: runArea + offset, count: count)
    }

    /// KVM_RUN once. Returns false when interrupted (EINTR: a kick or immediate_exit),
    /// true when KVM exited for a reason in `run.pointee.exit_reason`.
    func runOnce() throws(KVMError) -> Bool {
        do {
            try fd.ioctl("KVM_RUN", CKVM_RUN, nil, retryOnInterrupt: false)
            return true
        } catch .ioctlFailed(_, EINTR) {
            return false
        } catch .ioctlFailed(_, EAGAIN) {
            return false
        }
    }

    /// Sets `immediate_exit` so the next (or current, once kicked) KVM_RUN returns EINTR.
    func setImmediateExit(_ on: Bool) {
        // Sound: a single byte written to the shared run area; KVM reads it on entry.
        run.pointee.immediate_exit = on ? 1 : 0
    }

    /// KVM_SET_CPUID2.
    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        let buffer = KVMVarBuffer<kvm_cpuid2, kvm_cpuid_entry2>(capacity: entries.count)
        buffer.header.pointee.nent = UInt32(entries.count)
        for (i, e) in entries.enumerated() { buffer.entries[i] = e }
        try fd.ioctl("KVM_SET_CPUID2", CKVM_SET_CPUID2, buffer.pointer)
    }

    /// KVM_GET_TSC_KHZ, or nil when unsupported.
    public func tscKHz() -> UInt32? {
        guard let khz = try? fd.ioctl("KVM_GET_TSC_KHZ", CKVM_GET_TSC_KHZ, value: 0), khz > 0 else { return nil }
        return UInt32(khz)
    }

    // MARK: MSRs

    /// Reads the given MSRs. Returns those KVM could read; an MSR that fails is skipped
    /// (KVM_GET_MSRS stops at the first one it cannot read, so the batch resumes after it).
    public func readMSRs(_ indices: [UInt32]) throws(KVMError) -> [MSR] {
        var result: [MSR] = []
        result.reserveCapacity(indices.count)
        var start = 0
        while start < indices.count {
            let batch = indices[start...]
            let buffer = KVMVarBuffer<kvm_msrs, kvm_msr_entry>(capacity: batch.count)
            buffer.header.pointee.nmsrs = UInt32(batch.count)
            for (i, index) in batch.enumerated() { buffer.entries[i].index = index }
            let n = try fd.ioctl("KVM_GET_MSRS", CKVM_GET_MSRS, buffer.pointer)
            for i in 0..<n { result.append(MSR(index: buffer.entries[i].index, value: buffer.entries[i].data)) }
            start += n + 1 // skip the one that failed (if any)
        }
        return result
    }

    /// Writes MSRs. Returns the indices KVM refused (KVM_SET_MSRS stops at the first failure;
    /// the batch resumes after it), so a caller can report exactly what did not restore.
    @discardableResult
    public func writeMSRs(_ msrs: [MSR]) throws(KVMError) -> [UInt32] {
        var refused: [UInt32] = []
        var start = 0
        while start < msrs.count {
            let batch = msrs[start...]
            let buffer = KVMVarBuffer<kvm_msrs, kvm_msr_entry>(capacity: batch.count)
            buffer.header.pointee.nmsrs = UInt32(batch.count)
            for (i, msr) in batch.enumerated() {
                buffer.entries[i].index = msr.index
                buffer.entries[i].data = msr.value
            }
            let n = try fd.ioctl("KVM_SET_MSRS", CKVM_SET_MSRS, buffer.pointer)
            if n < batch.count { refused.append(batch[batch.startIndex + n].index) }
            start += n + 1
        }
        return refused
    }
}

/// A model-specific register and its value.
public struct MSR: Equatable, Hashable, Sendable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }
}
