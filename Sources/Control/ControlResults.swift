import Migrate

// The results of `selfcheck` and `recover` (protocol.md §4), as the host answers them and
// clients read them. (`status`: `VMStatus`; `migrate`: `MigrationStats`.)

/// `selfcheck`: the pages the guest verified and how many were wrong.
public struct SelfcheckResult: Codable, Sendable, Equatable {
    public var pages: UInt64
    public var bad: UInt64
}

/// `recover`: what the destination decided (or what was forced) and where the VM runs now.
public struct RecoverResult: Codable, Sendable, Equatable {
    /// "started", "aborted" or "unknown".
    public var outcome: String
    /// "stopped here (it runs at the destination)" or "resumed here".
    public var vm: String
    public var forced: Bool

    public init(outcome: CommitOutcome, forced: Bool) {
        self.outcome = outcome.description
        vm = outcome == .started ? "stopped here (it runs at the destination)" : "resumed here"
        self.forced = forced
    }
}

extension JSONValue {
    /// A result decoded as `type`, or `ControlError` saying the VM answered `command` with
    /// something this pvmigrate cannot read.
    public func result<T: Decodable>(_ type: T.Type, of command: ControlRequest.Command) throws(ControlError) -> T {
        do { return try decode(type) } catch {
            throw ControlError(.protocolViolation, "the answer to \(command.rawValue) is not what this pvmigrate reads: "
                + String(jsonText.prefix(300)))
        }
    }
}
