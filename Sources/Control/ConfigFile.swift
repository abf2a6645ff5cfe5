import Foundation

/// A daemon's configuration file that mirrors its command-line flags: a JSON object with one
/// member per flag, named like the flag without its dashes (`"max-incoming": 4` is
/// `--max-incoming 4`). It becomes command-line arguments placed *before* the real ones, so
/// one parser (the command's own) checks both and a flag given on the command line wins: a
/// key whose flag appears on the command line is left out.
///
/// A key must be in the schema; its value must be of the key's kind (checked here, with the
/// key's line); its range is then checked by the command's parser, one key at a time, so
/// that an error can still name the line. Adding a flag adds one schema entry.
///
/// JSON (Foundation) rather than TOML: LebJe/TOMLKit compiles the C++ toml++ library, which
/// costs far more than the ~40 s a clean debug build may grow by (docs/operations.md
/// "Configuration file" has the measurement).
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

    /// Parses `text` (the contents of `path`) against `schema`. Throws `ControlError`
    /// (`.invalidArgument`) naming the file, the line and the key.
    public init(path: String, text: String, schema: [String: Kind]) throws(ControlError) {
        self.path = path
        let root: JSONValue
        do { root = try JSONValue(parsing: Data(text.utf8)) } catch {
            throw ControlError(.invalidArgument, "\(path): not valid JSON (\(Self.reason(error))); "
                + "the file is one JSON object like {\"address\": \"0.0.0.0:7500\", \"max-incoming\": 4}")
        }
        guard let members = root.object else {
            throw ControlError(.invalidArgument, "\(path): the file must be one JSON object of flag names and values")
        }
        let lines = Self.keyLines(text)
        var entries: [Entry] = []
        for (key, value) in members {
            let at = "\(path)\(lines[key].map { " line \($0)" } ?? ""): "
            guard let kind = schema[key] else {
                throw ControlError(.invalidArgument, at + "unknown key \"\(key)\"; the keys are the flags' names: "
                    + schema.keys.sorted().joined(separator: ", "))
            }
            guard let arguments = Self.arguments(key, kind, value) else {
                throw ControlError(.invalidArgument, at + "\"\(key)\" must be \(Self.expected(kind))")
            }
            entries.append(Entry(key: key, arguments: arguments, line: lines[key]))
        }
        self.entries = entries.sorted { ($0.line ?? .max, $0.key) < ($1.line ?? .max, $1.key) }
    }

    /// Reads and parses the file at `path`.
    public init(path: String, schema: [String: Kind]) throws(ControlError) {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ControlError(.invalidArgument, "cannot read the config file \(path): \(Self.reason(error))")
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

    private static func arguments(_ key: String, _ kind: Kind, _ value: JSONValue) -> [String]? {
        let flag = "--" + key
        switch (kind, value) {
        case let (.string, .string(s)): return [flag, s]
        case let (.integer, .int(n)): return [flag, "\(n)"]
        case let (.integer, .uint(n)): return [flag, "\(n)"]
        case let (.number, .int(n)): return [flag, "\(n)"]
        case let (.number, .uint(n)): return [flag, "\(n)"]
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

    /// The line of each top-level key's first appearance as `"key":` (a key nested deeper
    /// would be refused anyway: values are not objects).
    private static func keyLines(_ text: String) -> [String: Int] {
        var lines: [String: Int] = [:]
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var rest = Substring(line)
            while let open = rest.firstIndex(of: "\"") {
                let afterOpen = rest.index(after: open)
                guard let close = rest[afterOpen...].firstIndex(of: "\"") else { break }
                let key = String(rest[afterOpen..<close])
                rest = rest[rest.index(after: close)...]
                if rest.drop(while: { $0 == " " || $0 == "\t" }).first == ":", lines[key] == nil {
                    lines[key] = index + 1
                }
            }
        }
        return lines
    }

    private static func reason(_ error: any Error) -> String {
        let text = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
        return text ?? (error as NSError).localizedDescription
    }
}

/// `pvmigrate listen --config FILE`: one key per `listen` flag (README "Running in
/// production"). A new flag of `listen` adds its line here; a test checks that every flag
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
        "control": .string,
    ]

    /// `arguments` (without the program name) with a `listen --config FILE`'s keys placed
    /// before the command line's own flags; other commands' arguments come back unchanged.
    /// `check(entry)` checks one key's value alone (the command's parser), so an error names
    /// the line; it throws the message to show.
    public static func expand(_ arguments: [String],
                              check: (ConfigFile.Entry) throws -> Void) throws(ControlError) -> [String] {
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
                throw ControlError(.invalidArgument, file.location(entry) + "\"\(entry.key)\": \(error)")
            }
        }
        return ["listen"] + file.arguments(before: rest)
    }
}
