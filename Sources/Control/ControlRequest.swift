import Foundation

/// One request line of the control protocol (protocol.md §4), parsed and checked before any
/// thread acts on it: one JSON object with a string `cmd` naming a known command, and no
/// argument that command does not take. The line comes from a local client and is untrusted;
/// the checks here are the whole of what `VMHost` trusts about it (fuzzed by Fuzz/, target
/// `control`).
struct ControlRequest {
    enum Command: String, CaseIterable {
        case status, stop, console, selfcheck, migrate, cancel, recover

        /// The argument names this command takes.
        var arguments: Set<String> {
            switch self {
            case .console: ["follow"]
            case .migrate: Set(MigrateArguments.keys)
            case .status, .stop, .selfcheck, .cancel: []
            case .recover: ["force"]
            }
        }
    }

    /// What one line turned out to be.
    enum Parsed {
        /// Only spaces, tabs and carriage returns: ignored.
        case blank
        case request(ControlRequest)
        /// Answer `{"id": id, "ok": false, "error": message}`.
        case refused(id: JSONValue, message: String)
    }

    let id: JSONValue
    let command: Command
    /// The request's fields without `id` and `cmd`, each one the command takes.
    let arguments: [String: JSONValue]

    static func parse(_ line: [UInt8]) -> Parsed {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0d }) { return .blank }
        guard let request = try? JSONValue(parsing: Data(line)), let fields = request.object else {
            return .refused(id: .null, message:
                "malformed request: each line must be one JSON object like {\"id\": 1, \"cmd\": \"status\"}")
        }
        let id = fields["id"] ?? .null
        guard let name = fields["cmd"]?.string else {
            return .refused(id: id, message:
                "malformed request: \"cmd\" must be a string (status, stop, console, selfcheck, migrate, cancel, recover)")
        }
        guard let command = Command(rawValue: name) else {
            return .refused(id: id, message:
                "unknown command \"\(name)\"; the commands are status, stop, console, selfcheck, migrate, cancel and recover")
        }
        var arguments = fields
        arguments["id"] = nil
        arguments["cmd"] = nil
        let allowed = command.arguments
        if let unknown = arguments.keys.sorted().first(where: { !allowed.contains($0) }) {
            return .refused(id: id, message: "\(name) takes no argument \"\(unknown)\""
                + (allowed.isEmpty ? "" : " (it takes: \(allowed.sorted().joined(separator: ", ")))"))
        }
        return .request(ControlRequest(id: id, command: command, arguments: arguments))
    }
}
