import Testing
import Control

/// `Endpoint`, the one parser of HOST:PORT (`send`, `listen --address`, `migrate`'s destination).
@Suite struct EndpointTests {
    @Test func parsesAddressesNamesAndBracketedIPv6() throws {
        let good: [(String, String, UInt16, String)] = [
            ("192.0.2.20:7070", "192.0.2.20", 7070, "192.0.2.20:7070"),
            ("127.0.0.1:1", "127.0.0.1", 1, "127.0.0.1:1"),
            ("[::1]:7070", "::1", 7070, "[::1]:7070"),
            ("[fe80::1%eth0]:65535", "fe80::1%eth0", 65535, "[fe80::1%eth0]:65535"),
            ("dst.example:7500", "dst.example", 7500, "dst.example:7500"),
            ("localhost:80", "localhost", 80, "localhost:80"),
        ]
        for (text, host, port, shown) in good {
            let e = try Endpoint(parsing: text)
            #expect(e.host == host && e.port == port, "\(text)")
            #expect(e.description == shown)
            #expect(try Endpoint(parsing: e.description) == e)
        }
    }

    @Test func refusesBadInputSayingWhy() {
        let bad: [(String, String)] = [
            ("", "missing :PORT"),
            ("host", "missing :PORT"),
            (":7070", "empty host"),
            ("[]:7070", "empty host"),
            ("host:", "the port must be 1–65535"),
            ("host:0", "the port must be 1–65535"),
            ("host:65536", "the port must be 1–65535"),
            ("host:-1", "the port must be 1–65535"),
            ("host:70x", "the port must be 1–65535"),
            ("::1:7070", "write an IPv6 address in brackets"),
            ("[::1]7070", "missing :PORT"),
            ("[::1:7070", "missing ']'"),
            ("a b:1", "a space or '/'"),
            ("a/b:1", "a space or '/'"),
        ]
        for (text, why) in bad {
            #expect { try Endpoint(parsing: text) } throws: { error in
                guard let e = error as? ControlError else { return false }
                return e.kind == .invalidArgument && e.message.contains(why) && e.message.contains("\"\(text)\"")
            }
        }
    }

    @Test func portZeroOnlyForAPlaceToListen() throws {
        #expect(try Endpoint(parsing: "0.0.0.0:0", anyPort: true) == Endpoint(host: "0.0.0.0", port: 0))
        #expect(try Endpoint(parsing: "[::]:0", anyPort: true).host == "::")
        #expect(throws: ControlError.self) { try Endpoint(parsing: "0.0.0.0:0") }
        #expect { try Endpoint(parsing: "h:65536", anyPort: true) } throws: {
            ($0 as? ControlError)?.message.contains("0–65535") == true
        }
    }
}
