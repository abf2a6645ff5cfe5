import Glibc
import Posix

/// Everything that can go wrong talking to KVM. Each case names the operation and,
/// where the kernel said why, the errno — plus what the user can do about it.
public enum KVMError: Error, Equatable, CustomStringConvertible {
    /// /dev/kvm could not be opened.
    case deviceUnavailable(path: String, errno: Int32)
    /// KVM speaks an API version other than 12.
    case unsupportedAPIVersion(Int)
    /// An ioctl failed; `operation` is its KVM name (e.g. "KVM_RUN").
    case ioctlFailed(operation: String, errno: Int32)
    /// A capability pvmigrate needs is missing.
    case missingCapability(String)
    /// mmap of the vCPU run area or of guest memory failed.
    case mmapFailed(what: String, errno: Int32)

    public var description: String {
        switch self {
        case let .deviceUnavailable(path, err):
            let hint: String
            switch err {
            case ENOENT: hint = "this host has no KVM: load the kvm module (or kvm_pvm) or run on a host with virtualization"
            case EACCES, EPERM: hint = "you may not use it: run as root or add yourself to the 'kvm' group"
            default: hint = "check that KVM is loaded and usable"
            }
            return "cannot open \(path): \(Errno(err)); \(hint)"
        case let .unsupportedAPIVersion(v):
            return "KVM API version \(v) is not supported (pvmigrate needs 12); the host kernel is unusual"
        case let .ioctlFailed(op, err):
            return "\(op) failed: \(Errno(err))"
        case let .missingCapability(cap):
            return "KVM lacks \(cap), which pvmigrate needs on this host"
        case let .mmapFailed(what, err):
            return "mmap of \(what) failed: \(Errno(err))"
        }
    }
}
