import CKVM
import Glibc

/// An owned KVM file descriptor (/dev/kvm, a VM or a vCPU), closed on deinit.
///
/// This is the one place in pvmigrate that issues ioctls (style.md §2): every call
/// goes through `ioctl(_:_:)`, which retries EINTR (except where told not to) and turns a
/// failure into `KVMError.ioctlFailed` naming the request.
final class KVMFileDescriptor: @unchecked Sendable {
    let raw: Int32

    init(owning raw: Int32) { self.raw = raw }

    deinit { close(raw) }

    /// An ioctl whose argument is a pointer. Returns the ioctl's non-negative result.
    @discardableResult
    func ioctl(_ name: String, _ request: UInt, _ arg: UnsafeMutableRawPointer?,
               retryOnInterrupt: Bool = true) throws(KVMError) -> Int {
        let r = ckvm_ioctl(raw, request, arg, retryOnInterrupt ? 1 : 0)
        if r < 0 { throw .ioctlFailed(operation: name, errno: Int32(-r)) }
        return r
    }

    /// An ioctl whose argument is a pointer to `value`, in and out.
    @discardableResult
    func ioctl<T>(_ name: String, _ request: UInt, _ value: inout T) throws(KVMError) -> Int {
        // Sound: the pointer is valid for the duration of the call and KVM reads/writes
        // exactly sizeof(T) bytes for these requests (T is the request's kernel struct).
        let r = withUnsafeMutableBytes(of: &value) { ckvm_ioctl(raw, request, $0.baseAddress, 1) }
        if r < 0 { throw .ioctlFailed(operation: name, errno: Int32(-r)) }
        return r
    }

    /// An ioctl whose argument is a byte buffer the caller sized for the request.
    @discardableResult
    func ioctl(_ name: String, _ request: UInt, buffer: inout [UInt8]) throws(KVMError) -> Int {
        // Sound: the caller sized `buffer` to the request's struct; valid during the call.
        let r = buffer.withUnsafeMutableBytes { ckvm_ioctl(raw, request, $0.baseAddress, 1) }
        if r < 0 { throw .ioctlFailed(operation: name, errno: Int32(-r)) }
        return r
    }

    /// An ioctl whose argument is an integer.
    @discardableResult
    func ioctl(_ name: String, _ request: UInt, value: UInt) throws(KVMError) -> Int {
        let r = ckvm_ioctl_value(raw, request, value)
        if r < 0 { throw .ioctlFailed(operation: name, errno: Int32(-r)) }
        return r
    }
}

/// A heap buffer for KVM's variable-length structs (kvm_cpuid2, kvm_msrs, kvm_msr_list,
/// kvm_xsave2): a fixed header followed by `count` entries.
struct KVMVarBuffer<Header, Entry>: ~Copyable {
    let pointer: UnsafeMutableRawPointer
    let capacity: Int
    let byteCount: Int

    init(capacity: Int) {
        self.capacity = capacity
        byteCount = MemoryLayout<Header>.size + capacity * MemoryLayout<Entry>.stride
        pointer = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 16)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
    }

    deinit { pointer.deallocate() }

    var header: UnsafeMutablePointer<Header> { pointer.assumingMemoryBound(to: Header.self) }

    /// The entry array that follows the header. Sound: the allocation holds `capacity`
    /// entries after the header, zero-initialised, and entries are plain C structs.
    var entries: UnsafeMutableBufferPointer<Entry> {
        let base = (pointer + MemoryLayout<Header>.size).assumingMemoryBound(to: Entry.self)
        return UnsafeMutableBufferPointer(start: base, count: capacity)
    }
}
