import Posix

/// Why a PV NIC's host side could not be set up (one line each, saying what to do).
public enum NetError: Error, CustomStringConvertible, Equatable {
    case noTunDevice
    case notPermitted(String)
    case noSuchBridge(String)
    case notABridge(String)
    case badName(String)
    case system(String, Errno)

    public var description: String {
        switch self {
        case .noTunDevice:
            return "no /dev/net/tun on this host: load the tun module (modprobe tun) or run where TAP devices exist"
        case let .notPermitted(what):
            return "not permitted to \(what): run pvmigrate as root (or give it CAP_NET_ADMIN)"
        case let .noSuchBridge(name):
            return "no bridge named \(name): create it first (ip link add \(name) type bridge && ip link set \(name) up)"
        case let .notABridge(name):
            return "\(name) is not a bridge: name a Linux bridge (ip -d link show type bridge lists them)"
        case let .badName(name):
            return "bad interface name \"\(name)\": 1–15 characters, no '/', ':' or spaces"
        case let .system(what, errno):
            return "cannot \(what): \(errno)"
        }
    }
}
