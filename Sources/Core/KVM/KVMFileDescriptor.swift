import CKVM
import Glibc
import Posix

/// An owned KVM file descriptor (/dev/kvm, a VM or a vCPU), closed on deinit (it owns a
/// Posix `FileDescriptor`).
///
/// This is the one place in pvmigrate that issues ioctls (style.md §2): every call
/// goes through `ioctl(_:_:)`, which retries EINTR (except where told not to) and turns a
/// failure into `KVMError.ioctlFailed` naming the request.
final class KVMFileDescriptor: Sendable {
    private let descriptor: FileDescriptor
    var raw: Int32 { descriptor.rawValue }

    init(owning raw: Int32) { descriptor = FileDescriptor(owning: raw) }

    /// open(2) of a KVM device node (/dev/kvm).
    static func open(_ path: String) throws(Errno) -> KVMFileDescriptor {
        let fd = try FileDescriptor.open(path, O_RDWR)
        return KVMFileDescriptor(descriptor: fd)
    }

    private init(descriptor: FileDescriptor) { self.descriptor = descriptor }

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

    /// An ioctl whose argument is `value`, a kernel struct that points at `buffer` (set by
    /// `attach`, e.g. `kvm_dirty_log.dirty_bitmap`): the buffer stays valid during the call.
    @discardableResult
    func ioctl<T, Element>(_ name: String, _ request: UInt, _ value: inout T, buffer: inout [Element],
                           attach: (inout T, UnsafeMutableRawPointer?) -> Void) throws(KVMError) -> Int {
        // Sound: `buffer`'s storage is pinned for the closure, which is where the kernel reads
        // or writes it; the caller sized it for the request.
        let result = buffer.withUnsafeMutableBytes { bytes in
            attach(&value, bytes.baseAddress)
            return Result { () throws(KVMError) in try ioctl(name, request, &value) }
        }
        return try result.get()
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

extension KVMFileDescriptor {
    /// An ioctl that fills a variable-length list (a `Header` whose `count` field says how
    /// many `Entry`s fit on the way in and how many KVM wrote on the way out), retrying with
    /// twice the room while KVM says E2BIG, until `limit` entries were offered.
    func ioctlList<Header, Entry>(_ name: String, _ request: UInt, count: WritableKeyPath<Header, UInt32>,
                                  of _: Entry.Type, capacity initial: Int, limit: Int) throws(KVMError) -> [Entry] {
        var capacity = initial
        while true {
            let buffer = KVMVarBuffer<Header, Entry>(capacity: capacity)
            buffer.header.pointee[keyPath: count] = UInt32(capacity)
            do {
                try ioctl(name, request, buffer.pointer)
                return Array(buffer.entries.prefix(Int(buffer.header.pointee[keyPath: count])))
            } catch .ioctlFailed(_, E2BIG) where capacity < limit {
                capacity *= 2
            }
        }
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
