import CKVM
import Foundation
import Posix

/// A TAP interface on /dev/net/tun (IFF_TAP | IFF_NO_PI: each read or write is one Ethernet
/// frame). A TAP pvmigrate created disappears when its descriptor closes; one named with
/// `--net tap=NAME` (an existing, persistent TAP) stays.
public final class TapDevice: Sendable {
    public let name: String
    public let descriptor: FileDescriptor

    /// Opens a TAP: `existing` names one to attach to, nil creates a new one (named by the kernel).
    public init(existing: String? = nil) throws(NetError) {
        if let existing { try Self.check(name: existing) }
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK) } catch {
            switch error.rawValue {
            case ENOENT, ENODEV, ENXIO: throw .noTunDevice
            case EPERM, EACCES: throw .notPermitted("open /dev/net/tun")
            default: throw .system("open /dev/net/tun", error)
            }
        }
        var out = [CChar](repeating: 0, count: 16)
        let rc = ckvm_tap_attach(fd.rawValue, existing ?? "", &out)
        guard rc == 0 else {
            fd.close()
            let what = existing.map { "attach to TAP \($0)" } ?? "create a TAP device"
            if rc == -EPERM || rc == -EACCES { throw .notPermitted(what) }
            throw .system(what, Errno(-rc))
        }
        name = String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        descriptor = fd
    }

    /// Wraps an open non-blocking descriptor that carries one frame per read and write, for
    /// tests: one end of a SOCK_SEQPACKET socket pair stands in for the TAP's kernel queue.
    init(frameDescriptor: FileDescriptor, name: String) {
        self.name = name
        descriptor = frameDescriptor
    }

    /// Adds this TAP to `bridge` and sets it up.
    public func attach(toBridge bridge: String) throws(NetError) {
        try Self.check(bridge: bridge)
        let rc = ckvm_bridge_add(bridge, name)
        guard rc == 0 else {
            if rc == -EPERM || rc == -EACCES { throw .notPermitted("add \(name) to bridge \(bridge)") }
            if rc == -ENODEV { throw .noSuchBridge(bridge) }
            throw .system("add \(name) to bridge \(bridge)", Errno(-rc))
        }
        try up()
    }

    /// Sets the TAP up (a bridge port or a TAP used on its own).
    public func up() throws(NetError) {
        let rc = ckvm_link_up(name)
        guard rc == 0 else {
            if rc == -EPERM || rc == -EACCES { throw .notPermitted("set \(name) up") }
            throw .system("set \(name) up", Errno(-rc))
        }
    }

    /// Throws unless `bridge` names an existing Linux bridge on this host.
    public static func check(bridge: String) throws(NetError) {
        try check(name: bridge)
        guard FileManager.default.fileExists(atPath: "/sys/class/net/\(bridge)") else { throw .noSuchBridge(bridge) }
        guard FileManager.default.fileExists(atPath: "/sys/class/net/\(bridge)/bridge") else { throw .notABridge(bridge) }
    }

    static func check(name: String) throws(NetError) {
        guard (1...15).contains(name.utf8.count), !name.contains(where: { "/: \t\n".contains($0) }),
              name != ".", name != ".." else { throw .badName(name) }
    }
}
