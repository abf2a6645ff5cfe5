import Foundation
import Migrate

/// One request of the control protocol (protocol.md §4): the whole command set in one type,
/// which the VM's host dispatches on and the clients send. Its `Codable` form is the request
/// object without `id`, e.g. `{"cmd": "console", "follow": true}`; each argument's name is
/// written once, as a coding key (here, in `MigrateRequest` and in `MigrationOptions`).
public enum ControlRequest: Sendable, Equatable {
    /// `{name, state, memory_bytes, …}`.
    case status
    /// Ends the VM.
    case stop
    /// The recent output as `console` events, and with `follow` the new output until the VM ends.
    case console(follow: Bool)
    /// Asks the guest to verify every page it wrote (protocol.md §2.7).
    case selfcheck
    /// Live-migrates the VM: `round` events, then `MigrationStats`.
    case migrate(MigrateRequest)
    /// Cancels the migration in progress.
    case cancel
    /// Settles an unresolved migration (protocol.md §3.6.5); `force` decides without asking.
    case recover(force: RecoverForce?)
    /// The VM's migration job: the one in progress, else the last one (`MigrationJob`; §4.1).
    case job
    /// A listener's arrivals, in progress and recently finished (`ArrivalJob`s; §4.2). Only a
    /// listener's control socket (`listen --control`) answers it.
    case jobs
    /// Saves the VM to a snapshot file (protocol.md §6): `round` events, then `SnapshotSaved`.
    case save(SaveRequest)

    /// The `cmd` of each request.
    public enum Command: String, CaseIterable, Sendable, Codable {
        case status, stop, console, selfcheck, migrate, cancel, recover, job, jobs, save
    }

    public var command: Command {
        switch self {
        case .status: .status
        case .stop: .stop
        case .console: .console
        case .selfcheck: .selfcheck
        case .migrate: .migrate
        case .cancel: .cancel
        case .recover: .recover
        case .job: .job
        case .jobs: .jobs
        case .save: .save
        }
    }

    /// The argument names `command` takes (members of the request besides `id` and `cmd`).
    public static func arguments(of command: Command) -> [String] {
        switch command {
        case .console: ConsoleKey.allCases.map(\.stringValue)
        case .recover: RecoverKey.allCases.map(\.stringValue)
        case .migrate: MigrateRequest.argumentNames
        case .save: SaveRequest.argumentNames
        case .status, .stop, .selfcheck, .cancel, .job, .jobs: []
        }
    }
}

/// `recover`'s `force`: settle without asking the destination (dangerous).
public enum RecoverForce: String, Sendable, Codable, CaseIterable {
    /// Resume the VM here: as if the destination aborted.
    case resume
    /// Stop it here: as if the destination started it.
    case stop

    /// The outcome forcing means.
    public var outcome: CommitOutcome { self == .resume ? .aborted : .started }
}

extension ControlRequest: Codable {
    private enum CommandKey: String, CodingKey { case cmd }
    private enum ConsoleKey: String, CodingKey, CaseIterable { case follow }
    private enum RecoverKey: String, CodingKey, CaseIterable { case force }

    public init(from decoder: any Decoder) throws {
        let command = try decoder.container(keyedBy: CommandKey.self).decode(Command.self, forKey: .cmd)
        switch command {
        case .status: self = .status
        case .stop: self = .stop
        case .selfcheck: self = .selfcheck
        case .cancel: self = .cancel
        case .job: self = .job
        case .jobs: self = .jobs
        case .console:
            let c = try decoder.container(keyedBy: ConsoleKey.self)
            self = .console(follow: try c.argument(.follow, must: "true or false") ?? false)
        case .recover:
            let c = try decoder.container(keyedBy: RecoverKey.self)
            self = .recover(force: try c.argument(.force, must: "\"resume\" or \"stop\""))
        case .migrate:
            self = .migrate(try MigrateRequest(from: decoder))
        case .save:
            self = .save(try SaveRequest(from: decoder))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CommandKey.self)
        try c.encode(command, forKey: .cmd)
        switch self {
        case .status, .stop, .selfcheck, .cancel, .job, .jobs: break
        case let .console(follow):
            var a = encoder.container(keyedBy: ConsoleKey.self)
            try a.encode(follow, forKey: .follow)
        case let .recover(force):
            var a = encoder.container(keyedBy: RecoverKey.self)
            try a.encodeIfPresent(force, forKey: .force)
        case let .migrate(m):
            try m.encode(to: encoder)
        case let .save(s):
            try s.encode(to: encoder)
        }
    }

    /// What one request line turned out to be.
    public enum Parsed: Sendable, Equatable {
        /// Only spaces, tabs and carriage returns: ignored.
        case blank
        case request(id: JSONValue, ControlRequest)
        /// Answer `{"id": id, "ok": false, "error": message}`.
        case refused(id: JSONValue, message: String)
    }

    /// Parses and checks one request line: one JSON object with a string `cmd` naming a
    /// known command, no argument that command does not take, each argument of its type and
    /// in its range. The line comes from a local client and is untrusted; this is the whole
    /// of what `VMHost` trusts about it (fuzzed by Fuzz/, target `control`).
    public static func parse(_ line: [UInt8]) -> Parsed {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0d }) { return .blank }
        guard let request = try? JSONValue(parsing: Data(line)), var fields = request.object else {
            return .refused(id: .null, message:
                "malformed request: each line must be one JSON object like {\"id\": 1, \"cmd\": \"status\"}")
        }
        let id = fields.removeValue(forKey: "id") ?? .null
        let names = Command.allCases.map(\.rawValue)
        guard let name = fields["cmd"]?.string else {
            return .refused(id: id, message:
                "malformed request: \"cmd\" must be a string (\(names.joined(separator: ", ")))")
        }
        guard let command = Command(rawValue: name) else {
            return .refused(id: id, message: "unknown command \"\(name)\"; the commands are "
                + names.dropLast().joined(separator: ", ") + " and \(names.last!)")
        }
        let allowed = Set(arguments(of: command))
        if let unknown = fields.keys.sorted().first(where: { $0 != "cmd" && !allowed.contains($0) }) {
            return .refused(id: id, message: "\(name) takes no argument \"\(unknown)\""
                + (allowed.isEmpty ? "" : " (it takes: \(allowed.sorted().joined(separator: ", ")))"))
        }
        do {
            return .request(id: id, try JSONValue.object(fields).decode(ControlRequest.self))
        } catch let error as ControlError {
            return .refused(id: id, message: "\(name): \(error.message)")
        } catch let MigrationError.invalidOptions(why) {
            return .refused(id: id, message: "\(name): \(why)")
        } catch {
            return .refused(id: id, message: "\(name): malformed arguments (\(error))")
        }
    }
}

/// `migrate`'s arguments (protocol.md §4): where to, how to authenticate, and the options.
public struct MigrateRequest: Sendable, Equatable {
    /// How the VM's process connects to the destination.
    public enum Security: Sendable, Equatable {
        /// Mutual TLS with the certificates in this directory (an absolute path).
        case tls(directory: String)
        /// Mutual TLS with the VM process's default directory (neither `tls_dir` nor `insecure`).
        case tlsDefault
        /// Plain TCP, no authentication.
        case insecure
    }

    public var destination: Endpoint
    public var security: Security
    /// The name the destination's certificate must carry; nil: the host of `destination`.
    public var peerName: String?
    public var options: MigrationOptions

    public init(destination: Endpoint, security: Security, peerName: String? = nil, options: MigrationOptions = .init()) {
        self.destination = destination
        self.security = security
        self.peerName = peerName
        self.options = options
    }

    /// Checks what decoding checks: the peer name and the options (`MigrationOptions.validate()`).
    public func validate() throws(ControlError) {
        if let peerName {
            guard PeerNames.isValid(peerName) else {
                throw ControlError(.invalidArgument, "\"peer_name\" must be a DNS name or an IP address")
            }
            if security == .insecure {
                throw ControlError(.invalidArgument, "\"peer_name\" and \"insecure\" exclude each other: plaintext checks no names")
            }
        }
        do { try options.validate() } catch {
            if case let .invalidOptions(why) = error { throw ControlError(.invalidArgument, why) }
            throw ControlError(.invalidArgument, error.description)
        }
    }

    fileprivate static var argumentNames: [String] {
        Key.allCases.map(\.stringValue) + MigrationOptions.CodingKeys.allCases.map(\.stringValue)
    }
}

extension MigrateRequest: Codable {
    private enum Key: String, CodingKey, CaseIterable {
        case destination, tlsDirectory = "tls_dir", insecure, peerName = "peer_name"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        guard let text: String = try c.argument(.destination, must: "\"host:port\"") else {
            throw ControlError(.invalidArgument, "\"destination\" (\"host:port\") is required")
        }
        do { destination = try Endpoint(parsing: text) } catch {
            throw ControlError(.invalidArgument, "destination \(error.message)")
        }
        let insecure: Bool = try c.argument(.insecure, must: "true or false") ?? false
        let directory: String? = try c.argument(.tlsDirectory, must: "a path")
        if insecure, directory != nil {
            throw ControlError(.invalidArgument, "\"tls_dir\" and \"insecure\" exclude each other")
        }
        security = insecure ? .insecure : directory.map { .tls(directory: RuntimeDirectory.absolute($0)) } ?? .tlsDefault
        peerName = try c.argument(.peerName, must: "a DNS name or an IP address")
        options = try MigrationOptions(from: decoder)
        try validate()
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(destination.description, forKey: .destination)
        switch security {
        case let .tls(directory): try c.encode(directory, forKey: .tlsDirectory)
        case .tlsDefault: break
        case .insecure: try c.encode(true, forKey: .insecure)
        }
        try c.encodeIfPresent(peerName, forKey: .peerName)
        try options.encode(to: encoder)
    }
}

extension KeyedDecodingContainer {
    /// An optional argument: nil when absent or null; otherwise of type `T`, or
    /// `ControlError` "\"key\" must be \(must)".
    func argument<T: Decodable>(_ key: Key, must: String) throws(ControlError) -> T? {
        try argument(key) { ControlError(.invalidArgument, "\"\($0)\" must be \(must)") }
    }
}
