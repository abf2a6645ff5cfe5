import Foundation
import Migrate

/// One line the server sends (protocol.md §4): an event of a request in progress, or its
/// final response. `id` echoes the request's as the server parsed it.
///
/// ```
/// {"id": 1, "event": "round", "data": {…}}
/// {"id": 1, "ok": true, "result": {…}}
/// {"id": 1, "ok": false, "error": "one line for people"}
/// ```
public enum ControlResponse: Sendable, Equatable {
    case event(id: JSONValue, ControlEvent)
    case ok(id: JSONValue, result: JSONValue)
    case failed(id: JSONValue, error: String)

    public var id: JSONValue {
        switch self {
        case let .event(id, _), let .ok(id, _), let .failed(id, _): id
        }
    }

    /// The line to send, without its `\n` (never contains one: JSON escapes it).
    public var line: [UInt8] {
        // Encoding a JSONValue, strings and a Bool cannot fail.
        (try? JSONValue.makeEncoder().encode(self)).map(Array.init) ?? Array(#"{"id":null,"ok":false}"#.utf8)
    }

    /// Parses one line a server sent; nil when it is not a response or event object.
    public init?(line: [UInt8]) {
        guard let value = try? JSONValue(parsing: Data(line)), value.object != nil,
              let response = try? value.decode(ControlResponse.self) else { return nil }
        self = response
    }
}

extension ControlResponse: Codable {
    private enum Key: String, CodingKey { case id, event, data, ok, result, error }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let id = try c.decodeIfPresent(JSONValue.self, forKey: .id) ?? .null
        if let name = try c.decodeIfPresent(String.self, forKey: .event) {
            self = .event(id: id, ControlEvent(name: name, data: try c.decodeIfPresent(JSONValue.self, forKey: .data) ?? .null))
        } else if try c.decode(Bool.self, forKey: .ok) {
            self = .ok(id: id, result: try c.decodeIfPresent(JSONValue.self, forKey: .result) ?? [:])
        } else {
            self = .failed(id: id, error: try c.decodeIfPresent(String.self, forKey: .error) ?? "refused without saying why")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(id, forKey: .id)
        switch self {
        case let .event(_, event):
            try c.encode(event.name, forKey: .event)
            try c.encode(event.data, forKey: .data)
        case let .ok(_, result):
            try c.encode(true, forKey: .ok)
            try c.encode(result, forKey: .result)
        case let .failed(_, error):
            try c.encode(false, forKey: .ok)
            try c.encode(error, forKey: .error)
        }
    }
}

/// An event of a request in progress (protocol.md §4).
public enum ControlEvent: Sendable, Equatable {
    /// `migrate`: one pre-copy round finished (`"round"`, data RoundStats).
    case round(RoundStats)
    /// `console`: a piece of the guest's output (`"console"`, data `{"text": …}`).
    case console(text: String)
    /// An event this version does not know (a client ignores it), or a known name whose
    /// data it cannot read.
    case other(name: String, data: JSONValue)

    public init(name: String, data: JSONValue) {
        switch name {
        case "round": self = (try? data.decode(RoundStats.self)).map(ControlEvent.round) ?? .other(name: name, data: data)
        case "console": self = data["text"]?.string.map { .console(text: $0) } ?? .other(name: name, data: data)
        default: self = .other(name: name, data: data)
        }
    }

    public var name: String {
        switch self {
        case .round: "round"
        case .console: "console"
        case let .other(name, _): name
        }
    }

    public var data: JSONValue {
        switch self {
        // RoundStats is numbers only: it always encodes.
        case let .round(stats): (try? JSONValue(encoding: stats)) ?? .null
        case let .console(text): ["text": .string(text)]
        case let .other(_, data): data
        }
    }
}
