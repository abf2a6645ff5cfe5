import ArgumentParser
import Logging
import Operations

/// `--log-format` and `--log-level`, shared by the commands that log (docs/operations.md "Logs").
struct LogOptions: ParsableArguments {
    @Option(name: .customLong("log-format"),
            help: "Log records as text (for people) or json (one object per line) (default: text).")
    var format: LogOutput.Format = .text

    @Option(name: .customLong("log-level"), help: "Least severe level logged: trace, debug, info, notice, warning, error, critical.")
    var level: Logger.Level = .info

    /// Points the process's log at `stream` in the chosen format and level. A daemon stamps
    /// its lines with the time unless the journal, which stamps them itself, receives them.
    func apply(stream: LogOutput.Stream, daemon: Bool) {
        LogOutput.shared.configure {
            $0.format = format
            $0.level = level
            $0.stream = stream
            $0.timestamps = daemon && !LogOutput.underJournal()
        }
    }
}

extension LogOutput.Format: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}
