/// A failure of the control plane (protocol.md §4), as one line for people: what happened
/// and what to do. `kind` lets a caller react (e.g. `ps` skips a VM that is gone).
public struct ControlError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: Sendable, Equatable {
        /// No VM of that name answers on this host.
        case noSuchVM
        /// The name belongs to a VM that runs (its socket answers).
        case nameTaken
        case invalidName
        /// A malformed argument (an endpoint, a migrate option).
        case invalidArgument
        /// The runtime directory cannot be created or used.
        case runtimeDirectory
        /// The socket could not be bound, connected, read or written.
        case connection
        /// The VM's process answered the request with `ok: false`; `message` is its reason.
        case refused
        /// The peer broke the protocol (a malformed or oversized line).
        case protocolViolation
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}
