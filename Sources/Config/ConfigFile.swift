import Foundation
import TOMLKit

/// A configuration file that cannot be used: one line for people, naming the file, the
/// line and the key where it can.
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A daemon's configuration file that mirrors its command-line flags: a TOML document with
/// one top-level key per flag, named like the flag without its dashes (`max-incoming = 4` is
/// `--max-incoming 4`). It becomes command-line arguments placed *before* the real ones, so
/// one parser (the command's own) checks both and a flag given on the command line wins: a
/// key whose flag appears on the command line is left out.
///
/// A key must be in the schema; its value must be of the key's kind (checked here, with the
/// key's line); its range is then checked by the command's parser, one key at a time, so
/// that an error can still name the line. Adding a flag adds one schema entry.
///
/// TOML through LebJe/TOMLKit (the C++ toml++): measured at 33–47 CPU-seconds of a clean
/// debug build (docs/operations.md "Configuration file"), within the ~40 s allowed on 2 cores.
public struct ConfigFile: Sendable, Equatable {
    /// What a key's value must be, and how it becomes arguments.
    public enum Kind: Sendable, Equatable {
        /// A string: `--key VALUE`.
        case string
        /// A whole number: `--key N`.
        case integer
        /// A number: `--key X`.
        case number
        /// true or false: `--key` when true, nothing when false (the default).
        case flag
        /// A list of strings (or one string): `--key A --key B`.
        case strings
    }

    /// One member of the file, as arguments, with where it was.
    public struct Entry: Sendable, Equatable {
        public var key: String
        public var arguments: [String]
        /// 1-based; nil when the key could not be found in the text (it always can in a
        /// file this parser accepted, short of escapes in the key).
        public var line: Int?
    }

    public let path: String
    /// In the order of the file.
    public let entries: [Entry]

    /// Parses `text` (the contents of `path`) against `schema`. Throws `ConfigError`
    /// naming the file, the line and the key.
    public init(path: String, text: String, schema: [String: Kind]) throws(ConfigError) {
        self.path = path
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let error as TOMLParseError {
            throw ConfigError("\(path) line \(error.source.begin.line): not valid TOML (\(error.description)); "
                + "the file holds one key per flag, like max-incoming = 4")
        } catch {
            throw ConfigError("\(path): not valid TOML (\(error))")
        }
        var members: [String: Value] = [:]
        for key in table.keys {
            if let value = table[key] { members[key] = Value(value) }
        }
        let lines = Self.keyLines(text)
        var entries: [Entry] = []
        for (key, value) in members {
            let at = "\(path)\(lines[key].map { " line \($0)" } ?? ""): "
            guard let kind = schema[key] else {
                throw ConfigError(at + "unknown key \"\(key)\"; the keys are the flags' names: "
                    + schema.keys.sorted().joined(separator: ", "))
            }
            guard let arguments = Self.arguments(key, kind, value) else {
                throw ConfigError(at + "\"\(key)\" must be \(Self.expected(kind))")
            }
            entries.append(Entry(key: key, arguments: arguments, line: lines[key]))
        }
        self.entries = entries.sorted { ($0.line ?? .max, $0.key) < ($1.line ?? .max, $1.key) }
    }

    /// Reads and parses the file at `path`.
    public init(path: String, schema: [String: Kind]) throws(ConfigError) {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError("cannot read the config file \(path): \(Self.reason(error))")
        }
        try self.init(path: path, text: text, schema: schema)
    }

    /// The file's arguments without those whose flag is on `commandLine`, followed by
    /// `commandLine`: the command line overrides the file.
    public func arguments(before commandLine: [String]) -> [String] {
        let given = Set(commandLine.compactMap { word -> String? in
            guard word.hasPrefix("--") else { return nil }
            return String(word.dropFirst(2).prefix { $0 != "=" })
        })
        return entries.filter { !given.contains($0.key) }.flatMap(\.arguments) + commandLine
    }

    /// Where `entry` is, for an error about its value: "PATH line N: ".
    public func location(_ entry: Entry) -> String {
        "\(path)\(entry.line.map { " line \($0)" } ?? ""): "
    }

    /// A TOML value, as far as flags care.
    enum Value: Equatable {
        case string(String), int(Int), double(Double), bool(Bool), array([Value]), other

        init(_ value: any TOMLValueConvertible) {
            switch value.type {
            case .string: self = value.string.map(Value.string) ?? .other
            case .int: self = value.int.map(Value.int) ?? .other
            case .double: self = value.double.map(Value.double) ?? .other
            case .bool: self = value.bool.map(Value.bool) ?? .other
            case .array: self = value.array.map { .array($0.map(Value.init)) } ?? .other
            default: self = .other
            }
        }

        var string: String? { if case let .string(s) = self { s } else { nil } }
    }

    private static func arguments(_ key: String, _ kind: Kind, _ value: Value) -> [String]? {
        let flag = "--" + key
        switch (kind, value) {
        case let (.string, .string(s)): return [flag, s]
        case let (.integer, .int(n)): return [flag, "\(n)"]
        case let (.number, .int(n)): return [flag, "\(n)"]
        case let (.number, .double(x)) where x.isFinite: return [flag, "\(x)"]
        case let (.flag, .bool(b)): return b ? [flag] : []
        case let (.strings, .string(s)): return [flag, s]
        case let (.strings, .array(items)):
            let strings = items.compactMap(\.string)
            guard strings.count == items.count else { return nil }
            return strings.flatMap { [flag, $0] }
        default: return nil
        }
    }

    private static func expected(_ kind: Kind) -> String {
        switch kind {
        case .string: "a string"
        case .integer: "a whole number"
        case .number: "a number"
        case .flag: "true or false"
        case .strings: "a string or a list of strings"
        }
    }

    /// The line of each top-level key: `key = …` (or `"key" = …`) before the first table
    /// header; a key inside a table is not a flag and is refused anyway.
    private static func keyLines(_ text: String) -> [String: Int] {
        var lines: [String: Int] = [:]
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.hasPrefix("[") { break }
            guard let equals = trimmed.firstIndex(of: "="), !trimmed.hasPrefix("#") else { continue }
            var key = trimmed[..<equals].trimmingCharacters(in: .whitespaces)
            if key.count >= 2, let q = key.first, q == "\"" || q == "'", key.last == q { key = String(key.dropFirst().dropLast()) }
            // A dotted key (`accept.zstd = …`) makes a table of its first part.
            for name in [key, String(key.prefix { $0 != "." })] where lines[name] == nil { lines[name] = index + 1 }
        }
        return lines
    }

    private static func reason(_ error: any Error) -> String {
        let text = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
        return text ?? (error as NSError).localizedDescription
    }
}

/// `pvmigrate listen --config FILE`: one key per `listen` flag (README "Running in
/// production"), e.g. `max-incoming = 4`, `allow-source = ["src.example"]`. A new flag of `listen` adds its line here; a test checks that every flag
/// `listen --help` shows has one.
public enum ListenConfig {
    public static let schema: [String: ConfigFile.Kind] = [
        "address": .string,
        "tls-dir": .string,
        "insecure": .flag,
        "allow-source": .strings,
        "max-memory": .string,
        "max-incoming": .integer,
        "max-pending": .integer,
        "handshake-timeout": .number,
        "progress-timeout": .number,
        "commit-timeout": .number,
        "json": .flag,
        "max-streams": .integer,
        "accept": .string,
        "net-bridge": .string,
        "net-poll-us": .integer,
        "control": .string,
        "metrics": .string,
        "log-format": .string,
        "log-level": .string,
    ]

    /// `arguments` (without the program name) with a `listen --config FILE`'s keys placed
    /// before the command line's own flags; other commands' arguments come back unchanged.
    /// `check(entry)` checks one key's value alone (the command's parser), so an error names
    /// the line; it throws the message to show.
    public static func expand(_ arguments: [String],
                              check: (ConfigFile.Entry) throws -> Void) throws(ConfigError) -> [String] {
        guard arguments.first == "listen" else { return arguments }
        let rest = Array(arguments.dropFirst())
        var path: String?
        for (i, word) in rest.enumerated() {
            if word == "--config", i + 1 < rest.count { path = rest[i + 1] }
            if word.hasPrefix("--config=") { path = String(word.dropFirst("--config=".count)) }
        }
        guard let path else { return arguments }
        let file = try ConfigFile(path: path, schema: schema)
        for entry in file.entries {
            do { try check(entry) } catch {
                throw ConfigError(file.location(entry) + "\"\(entry.key)\": \(error)")
            }
        }
        return ["listen"] + file.arguments(before: rest)
    }
}
