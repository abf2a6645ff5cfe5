import Core

/// Why a migration failed, by phase. The message says what happened and — on the source —
/// that the VM is still running here.
public enum MigrationError: Error, CustomStringConvertible {
    case transport(TransportError)
    case wire(WireError)
    case codec(CodecError)
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
    /// This host (the destination) refused or dropped the migration at a limit
    /// (protocol.md §3.1.1); the text names the limit and what to do. Goes to the peer
    /// as an ERROR frame with `code`.
    case refused(ErrorReport.Code, String)
    /// The STATE blob does not match the digest COMMIT carries (protocol.md §3.6.2).
    case stateDigestMismatch(expected: UInt64, actual: UInt64)
    /// A BALLOON frame the destination refused, or STATE without the final one (protocol.md §3.2.1).
    case balloonMap(BalloonMapError)
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
        case let .refused(code, why): return "\(code == .timeout ? "dropped" : "refused"): \(why)"
        case let .stateDigestMismatch(e, a):
            return "machine state digest mismatch (source 0x\(String(e, radix: 16)), destination 0x\(String(a, radix: 16))): "
                + "the vCPU/device state was damaged on the way"
        case let .balloonMap(e): return e.description
        case let .outcomeTable(why): return why
        case let .unresolved(u): return u.description
        }
    }

    /// Whether the peer should be told with an ERROR frame: not when it told us (protocol.md §3.7).
    var isReported: Bool {
        if case .peer = self { return false }
        return true
    }

    /// The reason to put in an ERROR frame: the description, without the "refused: " that
    /// the peer's report ("the destination refused: …") says already.
    var reportReason: String {
        if case let .refused(_, why) = self { return why }
        return description
    }

    /// The code to put in an ERROR frame for this failure (protocol.md §3.7).
    var reportCode: ErrorReport.Code {
        switch self {
        case .wire: .protocolViolation
        case let .codec(e): e.reportCode
        case let .refused(code, _): code
        case .incompatible: .unsupportedVersion
        case .machine: .resources
        case .digestMismatch, .stateDigestMismatch, .balloonMap(.digestMismatch): .digestMismatch
        case .balloonMap: .protocolViolation
        case .state: .restoreFailed
        case .cancelled: .cancelled
        case .transport(.timeout): .timeout
        default: .internalError
        }
    }
}

extension CodecError {
    /// The ERROR code for a codec failure: bytes from the peer that do not decode are its
    /// protocol violation (code 1), not an internal error of this host.
    var reportCode: ErrorReport.Code {
        switch self {
        case .zstdContextAllocationFailed: .resources
        case .compressionLevelInvalid, .compressionFailed: .internalError
        case .decompressNotAFrame, .decompressTruncated, .decompressTrailingBytes, .decompressMissingContentSize,
             .decompressMissingChecksum, .decompressSizeExceedsBound, .decompressCorrupt, .decompressSizeMismatch,
             .deltaMalformed, .pageBatchMalformed:
            .protocolViolation
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
