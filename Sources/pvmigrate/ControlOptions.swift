import ArgumentParser
import Control
import Core
import Foundation

// What the commands that talk to named VMs share: the VM argument, HOST:PORT and byte-rate
// arguments, the connection to a VM's control socket, and formatting.

/// The VM a control command addresses.
struct VMArgument: ParsableArguments {
    @Argument(help: "The VM's name (pvmigrate ps lists them).")
    var vm: String

    func validate() throws {
        do { try RuntimeDirectory.validate(name: vm) } catch { throw ValidationError("\(error)") }
    }

    /// Connects to the VM's control socket, or fails with one line for people.
    func connect() throws -> ControlClient {
        try ControlCommand.connect(vm)
    }
}

extension DirtySourceMode: ExpressibleByArgument {}

extension Endpoint: ExpressibleByArgument {
    public init?(argument: String) {
        guard let parsed = try? Endpoint(parsing: argument) else { return nil }
        self = parsed
    }

    /// For `@Argument(transform:)`/`@Option(transform:)`: the error says what is wrong.
    static func argument(_ text: String) throws -> Endpoint {
        do { return try Endpoint(parsing: text) } catch { throw ValidationError("\(error)") }
    }

    /// A place to listen: port 0 means any free port.
    static func listenArgument(_ text: String) throws -> Endpoint {
        do { return try Endpoint(parsing: text, anyPort: true) } catch { throw ValidationError("\(error)") }
    }
}

/// A rate in bytes per second: a number with an optional K/M/G suffix (binary units: 1G is
/// 1 GiB/s); a bare number is bytes per second.
struct ByteRate: ExpressibleByArgument, CustomStringConvertible {
    let bytesPerSecond: Double

    init?(argument: String) {
        var text = argument.uppercased()
        for suffix in ["/S", "B", "I"] where text.hasSuffix(suffix) { text.removeLast(suffix.count) }
        var scale = 1.0
        switch text.last {
        case "K": scale = 1024
        case "M": scale = 1_048_576
        case "G": scale = 1_073_741_824
        default: break
        }
        if scale != 1 { text.removeLast() }
        guard let n = Double(text), n.isFinite, n > 0 else { return nil }
        bytesPerSecond = n * scale
    }

    var description: String { Format.rate(bytesPerSecond) }
}

/// Talking to VMs' control sockets from the command line.
enum ControlCommand {
    static func runtime() throws -> RuntimeDirectory {
        do { return try RuntimeDirectory() } catch { throw Diagnostics.fail(error) }
    }

    static func connect(_ name: String) throws -> ControlClient {
        let runtime = try runtime()
        do { return try ControlClient(name: name, runtime: runtime) } catch { throw Diagnostics.fail(error) }
    }

    /// One request, failing with the VM's reason as one line.
    static func request(_ client: ControlClient, _ request: ControlRequest,
                        onEvent: (ControlEvent) -> Void = { _ in }) throws -> JSONValue {
        do { return try client.request(request, onEvent: onEvent) } catch { throw Diagnostics.fail(error) }
    }

    /// Pretty JSON on standard output.
    static func printJSON(_ value: JSONValue) {
        print(value == .array([]) ? "[]" : value.jsonText(pretty: true))
    }
}

/// Numbers for people.
enum Format {
    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "-" }
        let s = Int(seconds)
        switch s {
        case ..<60: return "\(s)s"
        case ..<3600: return "\(s / 60)m\(pad(s % 60))s"
        case ..<86400: return "\(s / 3600)h\(pad(s % 3600 / 60))m"
        default: return "\(s / 86400)d\(pad(s % 86400 / 3600))h"
        }
    }

    static func seconds(_ s: Double) -> String {
        guard s.isFinite else { return "-" }
        if s < 1 { return String(format: "%.1f ms", s * 1000) }
        return String(format: "%.2f s", s)
    }

    static func memory(_ bytes: UInt64) -> String {
        if bytes >= 1 << 30, bytes % (1 << 30) == 0 { return "\(bytes >> 30)G" }
        if bytes % (1 << 20) == 0 { return "\(bytes >> 20)M" }
        return "\(bytes >> 10)K"
    }

    /// Decimal megabytes, as network rates are usually quoted.
    static func bytes(_ n: Double) -> String {
        switch n {
        case ..<1e6: return String(format: "%.1f kB", n / 1e3)
        case ..<1e9: return String(format: "%.1f MB", n / 1e6)
        default: return String(format: "%.2f GB", n / 1e9)
        }
    }

    static func rate(_ bytesPerSecond: Double) -> String {
        guard bytesPerSecond.isFinite else { return "-" }
        return String(format: "%.1f MB/s", bytesPerSecond / 1e6)
    }

    static func count(_ n: Int) -> String {
        let digits = String(n.magnitude)
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0, (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return n < 0 ? "-" + out : out
    }

    private static func pad(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

    /// Columns padded to their widest cell, two spaces apart.
    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        let widths = (0..<first.count).map { c in rows.map { $0[c].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { c, cell in
                c == row.count - 1 ? cell : cell.padding(toLength: widths[c], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}
