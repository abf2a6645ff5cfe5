/// A network endpoint `host:port` (`[v6addr]:port` for an IPv6 literal), as `send` and
/// `listen --address` take it and as the control protocol's `migrate` carries it
/// (protocol.md §4): the one parser of `host:port` in pvmigrate.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`; the error says what is wrong, for people. Port 0 ("any free
    /// port") only with `anyPort` (a place to listen, never one to dial).
    public init(parsing text: String, anyPort: Bool = false) throws(ControlError) {
        func bad(_ why: String) -> ControlError {
            ControlError(.invalidArgument, "\"\(text)\" is not HOST:PORT (\(why)), e.g. 10.0.0.2:7070 or [::1]:7070")
        }
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw bad("missing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw bad("missing :PORT") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw bad("missing :PORT") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else { throw bad("write an IPv6 address in brackets") }
        }
        guard !host.isEmpty else { throw bad("empty host") }
        guard !host.contains(where: { $0 == " " || $0 == "/" }) else { throw bad("the host has a space or '/'") }
        guard let port = UInt16(portText), port > 0 || anyPort else {
            throw bad(anyPort ? "the port must be 0–65535" : "the port must be 1–65535")
        }
        self.init(host: String(host), port: port)
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}
