import Foundation
import Logging

// pvmigrate's one swift-log backend (docs/operations.md "Logs"): every `Logger` of every
// subsystem writes through `LogOutput`, as text for people or as one JSON object per line.

/// How log records are written, for the whole process. `LoggingSystem.bootstrap` may run only
/// once, so the bootstrap installs a factory that reads this (lock-protected) configuration
/// at each record: a command sets its format, level and stream before it logs.
public final class LogOutput: @unchecked Sendable {
    public enum Format: String, CaseIterable, Sendable {
        /// `[TIME ]pvmigrate: [LEVEL: ]message[ {key=value, …}]`
        case text
        /// One JSON object per line: `level`, `logger`, `message`, `time` (when timestamps are
        /// on) and every metadata key at the top level.
        case json
    }

    public enum Stream: Sendable { case standardOutput, standardError }

    public struct Configuration: Sendable {
        public var format: Format = .text
        public var level: Logger.Level = .info
        public var stream: Stream = .standardError
        public var timestamps = false
        public init() {}
    }

    public static let shared = LogOutput()

    private let lock = NSLock()
    private var configuration = Configuration() // guarded by `lock`
    /// Where records go instead of a standard stream (tests), guarded by `lock`.
    private var capture: (@Sendable (String) -> Void)?

    private init() {}

    public var current: Configuration { lock.withLock { configuration } }

    public func configure(_ change: (inout Configuration) -> Void) {
        lock.withLock { change(&configuration) }
    }

    /// Sends every line to `sink` instead of a stream (nil: back to the stream).
    public func capture(_ sink: (@Sendable (String) -> Void)?) { lock.withLock { capture = sink } }

    /// Installs `LogOutput` as swift-log's backend; call once, first thing in `main`.
    public static func bootstrap() {
        LoggingSystem.bootstrap { label in Handler(label: label, logLevel: shared.current.level) }
    }

    /// True when run by systemd with its standard error connected to the journal, which stamps
    /// every line itself (`JOURNAL_STREAM`, systemd.exec(5)).
    public static func underJournal(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        environment["JOURNAL_STREAM"].map { !$0.isEmpty } ?? false
    }

    fileprivate func write(_ record: Record) {
        let (configuration, capture) = lock.withLock { (self.configuration, self.capture) }
        let line = record.line(configuration.format, timestamps: configuration.timestamps) + "\n"
        if let capture { capture(line); return }
        let handle: FileHandle = configuration.stream == .standardOutput ? .standardOutput : .standardError
        // One write per line under the lock: lines of concurrent threads never interleave.
        lock.withLock { handle.write(Data(line.utf8)) }
    }

    /// One log record, already filtered by level.
    struct Record {
        var time: Date
        var level: Logger.Level
        var label: String
        var message: String
        var metadata: Logger.Metadata

        /// Keys the format itself writes in JSON; metadata cannot replace them.
        static let reservedKeys: Set = ["time", "level", "logger", "message"]

        func line(_ format: Format, timestamps: Bool) -> String {
            switch format {
            case .text: return text(timestamps: timestamps)
            case .json: return json(timestamps: timestamps)
            }
        }

        private func text(timestamps: Bool) -> String {
            var line = timestamps ? Self.timestamp(time) + " " : ""
            line += "pvmigrate: "
            if level != .info { line += "\(level.rawValue): " }
            line += message
            if !metadata.isEmpty {
                line += " {" + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ") + "}"
            }
            return line
        }

        private func json(timestamps: Bool) -> String {
            var object: [String: Any] = [:]
            for (key, value) in metadata where !Self.reservedKeys.contains(key) { object[key] = Self.jsonValue(value) }
            object["level"] = level.rawValue
            object["logger"] = label
            object["message"] = message
            if timestamps { object["time"] = Self.timestamp(time) }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
                ?? Data(#"{"level":"error","message":"unencodable log record"}"#.utf8)
            return String(decoding: data, as: UTF8.self)
        }

        /// Numbers and booleans stay JSON numbers and booleans; everything else is a string.
        static func jsonValue(_ value: Logger.Metadata.Value) -> Any {
            switch value {
            case let .string(s): return s
            case let .stringConvertible(c):
                switch c {
                case let b as Bool: return b
                case let i as any BinaryInteger: return NSNumber(value: Int64(truncatingIfNeeded: i))
                case let d as Double where d.isFinite: return d
                default: return c.description
                }
            case let .array(a): return a.map(jsonValue)
            case let .dictionary(d): return d.mapValues(jsonValue)
            }
        }

        /// RFC 3339 in UTC with milliseconds: "2026-11-30T07:01:02.345Z".
        static func timestamp(_ date: Date) -> String {
            date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        }
    }

    /// The `LogHandler` every `Logger` gets: value semantics for level and metadata, the
    /// writing done by the shared `LogOutput`.
    struct Handler: LogHandler {
        let label: String
        var logLevel: Logger.Level
        var metadata: Logger.Metadata = [:]
        var metadataProvider: Logger.MetadataProvider?

        init(label: String, logLevel: Logger.Level) {
            self.label = label
            self.logLevel = logLevel
        }

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var merged = metadata
            if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
            if let own = event.metadata { merged.merge(own) { _, new in new } }
            if let error = event.error, merged["error"] == nil { merged["error"] = "\(error)" }
            LogOutput.shared.write(Record(time: Date(), level: event.level, label: label,
                                          message: event.message.description, metadata: merged))
        }
    }
}

/// The subsystems' loggers (docs/operations.md "Logs" lists them). A fresh `Logger` at each
/// use, so one made before a command configured `LogOutput` never keeps a stale level.
public enum Log {
    public static var listen: Logger { logger("listen") }
    public static var send: Logger { logger("send") }
    public static var receiver: Logger { logger("migrate.receiver") }
    public static var commit: Logger { logger("commit") }
    public static var transport: Logger { logger("transport") }
    public static var vm: Logger { logger("vm") }
    public static var metrics: Logger { logger("metrics") }
    /// Whatever a command says that belongs to no subsystem (`Diagnostics` notes and warnings).
    public static var cli: Logger { logger("cli") }

    public static func logger(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = LogOutput.shared.current.level
        return logger
    }
}

extension Logger {
    /// This logger with `metadata` added to every record it writes.
    public func with(_ metadata: Logger.Metadata) -> Logger {
        var copy = self
        for (key, value) in metadata { copy[metadataKey: key] = value }
        return copy
    }
}
