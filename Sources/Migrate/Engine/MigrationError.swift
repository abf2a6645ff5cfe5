import Core

/// Why a migration failed, by phase. The message says what happened and — on the source —
/// that the VM is still running here.
public enum MigrationError: Error, CustomStringConvertible {
    case transport(TransportError)
    case wire(WireError)
    case codec(MigrateError)
    /// The peer sent an ERROR frame.
    case peer(ErrorReport)
    case incompatible(String)
    case dirtyTracking(DirtyTrackingError)
    case machine(MachineError)
    case state(StateCodingError)
    case digestMismatch(expected: UInt64, actual: UInt64)
    case notConverging(String)
    case cancelled
    case invalidOptions(String)
    /// The STATE blob does not match the digest COMMIT carries (protocol.md §3.6.2).
    case stateDigestMismatch(expected: UInt64, actual: UInt64)
    /// The destination's outcome table could not be read or written (protocol.md §3.6.4).
    case outcomeTable(String)
    /// GO may have reached the destination, but DONE did not arrive: the VM is paused here
    /// until the destination's decision is known (protocol.md §3.6.5).
    case unresolved(UnresolvedMigration)

    public var description: String {
        switch self {
        case let .transport(e): return e.description
        case let .wire(e): return e.description
        case let .codec(e): return e.description
        case let .peer(r): return "the destination refused: \(r.reason) (code \(r.code.rawValue))"
        case let .incompatible(why): return "incompatible peer: \(why)"
        case let .dirtyTracking(e): return e.description
        case let .machine(e): return e.description
        case let .state(e): return e.description
        case let .digestMismatch(e, a):
            return "memory digest mismatch (source 0x\(String(e, radix: 16)), destination 0x\(String(a, radix: 16))): pages were lost or damaged"
        case let .notConverging(why): return "the migration did not converge: \(why)"
        case .cancelled: return "the migration was cancelled"
        case let .invalidOptions(why): return "invalid migration options: \(why)"
        case let .stateDigestMismatch(e, a):
            return "machine state digest mismatch (source 0x\(String(e, radix: 16)), destination 0x\(String(a, radix: 16))): "
                + "the vCPU/device state was damaged on the way"
        case let .outcomeTable(why): return why
        case let .unresolved(u): return u.description
        }
    }

    /// The code to put in an ERROR frame for this failure.
    var reportCode: ErrorReport.Code {
        switch self {
        case .wire: .protocolViolation
        case .incompatible: .unsupportedVersion
        case .machine: .resources
        case .digestMismatch, .stateDigestMismatch: .digestMismatch
        case .state: .restoreFailed
        case .cancelled: .cancelled
        case .transport(.timeout): .timeout
        default: .internalError
        }
    }
}

/// A migration whose outcome the source does not know: it sent GO and never got DONE
/// (protocol.md §3.6.5). The VM stays paused at the source until the destination answers a
/// RESOLVE for `migrationID`, or an operator forces a side.
public struct UnresolvedMigration: Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16
    public let tls: TLSMode
    public let migrationID: [UInt8]
    /// What went wrong after GO was sent.
    public let reason: String

    public var destination: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    public var migrationIDHex: String { OutcomeTable.hex(migrationID) }

    public var description: String {
        "the outcome of migration \(migrationIDHex) to \(destination) is unknown (\(reason)): the VM is PAUSED here "
            + "until the destination says whether it started it; pvmigrate asks it automatically — see "
            + "`pvmigrate status` and `pvmigrate recover`"
    }
}
