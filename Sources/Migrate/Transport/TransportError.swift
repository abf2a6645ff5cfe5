// Errors of the network transport (protocol.md §3.1): TCP, TLS and the
// certificates behind it. One enum; each message says what failed and what
// the user can do about it.

#if canImport(Glibc)
import Glibc
#endif
import Posix

/// Everything that can go wrong while opening, using or closing a migration
/// stream, or while making and loading its certificates.
public enum TransportError: Error, Equatable, CustomStringConvertible {
    /// The host name did not resolve to any address.
    case resolveFailed(host: String)
    /// TCP connect failed (`errno` from connect(2); ETIMEDOUT when no answer
    /// came within the connect timeout).
    case connectFailed(host: String, port: UInt16, errno: Int32)
    /// The TLS handshake with `peer` failed; `reason` comes from OpenSSL's
    /// error queue (e.g. "certificate verify failed", "wrong version number").
    /// The connection is closed; a listener stays usable.
    case handshakeFailed(peer: String, reason: String)
    /// The peer's certificate is valid under the CA but does not carry the
    /// name this side requires (docs/security.md "Names"): the host dialed or
    /// `send --peer-name` when `peerIsSource` is false, one of `listen
    /// --allow-source` when true. `presented` lists its names ("DNS:evil (CN=evil)").
    case peerNameMismatch(peer: String, expected: [String], presented: String, peerIsSource: Bool)
    /// The peer aborted the handshake over this host's certificate although it
    /// is from the CA (TLS alert `reason`): its name policy refuses this host.
    /// `ownNames` lists this host's certificate names; `peerIsSource` says
    /// which end the peer is.
    case identityRefused(peer: String, reason: String, ownNames: String, peerIsSource: Bool)
    /// A certificate, key or TLS directory could not be created, read or used.
    /// The text is a complete sentence naming the file.
    case certificate(String)
    /// The peer closed the connection (EOF, or EPIPE on a write) before the
    /// requested bytes were transferred.
    case peerClosed
    /// No progress within the stream's timeout (`ByteStream.setTimeout`).
    case timeout
    /// This side closed the stream or listener (`close()`), possibly from
    /// another thread while this call was blocked.
    case closed
    /// A socket system call failed.
    case io(operation: String, errno: Int32)
    /// OpenSSL failed on an established TLS stream (corrupt record, bad MAC,
    /// alert from the peer...).
    case tls(String)
    /// A listener closed `peer`'s connection at once because a limit was
    /// reached (protocol.md §3.1.1); `reason` names the limit. The listener
    /// stays usable.
    case refused(peer: String, reason: String)

    public var description: String {
        switch self {
        case .resolveFailed(let host):
            return "cannot resolve host \"\(host)\": check the name (or use an IP address) and this host's DNS"
        case .connectFailed(let host, let port, let code):
            return "cannot connect to \(Self.endpoint(host, port)): \(Errno(code))"
                + Self.connectAdvice(code)
        case .handshakeFailed(let peer, let reason):
            return "TLS handshake with \(peer) failed: \(reason); check that both hosts use "
                + "certificates made by the same `pvmigrate certs init` CA and that both sides use TLS "
                + "(or both were told --insecure)"
        case .peerNameMismatch(let peer, let expected, let presented, false):
            let name = expected.first ?? "?"
            return "the destination \(peer) is not \(name): its certificate names \(presented), not \(name) — it may "
                + "be another host than the one you meant. Dial a name or address its certificate carries, pass "
                + "--peer-name NAME with the name it was issued for if it is the right host, or re-issue its "
                + "certificate with `pvmigrate certs init --dir DIR --hosts NAME=\(name)`"
        case .peerNameMismatch(let peer, let expected, let presented, true):
            return "refused source \(peer): its certificate names \(presented), none of the allowed sources "
                + "(--allow-source \(expected.joined(separator: ","))); if it may send VMs here, add one of its "
                + "names to --allow-source"
        case .identityRefused(let peer, let reason, let ownNames, true):
            return "the source \(peer) refused this host's identity (\(reason)): this certificate names "
                + "\(ownNames), and the source expected another name — it must dial a name or address this "
                + "certificate carries, or pass --peer-name with one of them"
        case .identityRefused(let peer, let reason, let ownNames, false):
            return "the destination \(peer) refused this host's identity (\(reason)): this host's certificate "
                + "names \(ownNames), and the destination's `listen --allow-source` does not list any of them — "
                + "add one there, or send from a host it allows"
        case .certificate(let message):
            return message
        case .peerClosed:
            return "the peer closed the connection before the transfer was complete; "
                + "check the peer's log for the reason"
        case .timeout:
            return "the peer sent or accepted no data within the stream timeout; the peer or the network "
                + "is stalled — check the peer and the network, then retry"
        case .closed:
            return "the connection was closed on this host (the migration was cancelled or is shutting down)"
        case .io(let operation, let code):
            return "\(operation) failed: \(Errno(code)); check the network and retry"
        case .tls(let message):
            return "TLS error on an established stream: \(message); the stream was damaged or the peer "
                + "misbehaved — retry the migration"
        case .refused(let peer, let reason):
            return "closed the connection from \(peer) at once: \(reason); if this is not a flood of "
                + "connections, raise the limit"
        }
    }

    /// "host:port", with brackets around an IPv6 literal.
    static func endpoint(_ host: String, _ port: UInt16) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    private static func connectAdvice(_ code: Int32) -> String {
        switch code {
        case ECONNREFUSED: return ": is `pvmigrate listen` running there, on that port?"
        case ETIMEDOUT: return ": check the address, the route and any firewall between the hosts"
        case EHOSTUNREACH, ENETUNREACH: return ": no route to that host — check the address and the network"
        default: return ": check the address and the network"
        }
    }
}
