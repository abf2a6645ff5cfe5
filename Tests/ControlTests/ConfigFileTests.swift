import Config
import Control
import Foundation
import Testing

/// `listen --config FILE` (ConfigFile, ListenConfig): the file's keys become flags placed
/// before the command line's, types are checked with the key's line, unknown keys refused.
@Suite struct ConfigFileTests {
    static let schema = ListenConfig.schema

    static func parse(_ text: String) throws(ConfigError) -> ConfigFile {
        try ConfigFile(path: "/etc/pvmigrate/listen.toml", text: text, schema: schema)
    }

    /// The error message of parsing `text`, or nil when it parses.
    static func error(_ text: String) -> String? {
        do { _ = try parse(text); return nil } catch { return error.message }
    }

    @Test func everyKindBecomesTheFlagsOfItsKey() throws {
        let file = try Self.parse("""
            # pvmigrate listen
            address = "127.0.0.1:7501"
            allow-source = ["a.example", "b.example"]
            max-incoming = 4
            commit-timeout = 2.5
            progress-timeout = 60
            insecure = false
            "json" = true
            """)
        #expect(file.entries.map(\.key) == ["address", "allow-source", "max-incoming", "commit-timeout",
                                            "progress-timeout", "insecure", "json"], "in the file's order")
        #expect(file.entries.map(\.line) == [2, 3, 4, 5, 6, 7, 8])
        #expect(file.arguments(before: []) == [
            "--address", "127.0.0.1:7501", "--allow-source", "a.example", "--allow-source", "b.example",
            "--max-incoming", "4", "--commit-timeout", "2.5", "--progress-timeout", "60", "--json",
        ])
    }

    @Test func flagsOnTheCommandLineOverrideTheFile() throws {
        let file = try Self.parse("max-incoming = 4\nallow-source = \"a.example\"\ntls-dir = \"/etc/pvmigrate/tls\"")
        let merged = file.arguments(before: ["--max-incoming", "8", "--allow-source=c.example"])
        #expect(merged == ["--tls-dir", "/etc/pvmigrate/tls", "--max-incoming", "8", "--allow-source=c.example"])
    }

    @Test func anUnknownKeyIsRefusedWithItsLineAndTheKnownKeys() {
        let message = Self.error("max-incoming = 4\n\nmax-incomming = 5\n")
        #expect(message?.contains("/etc/pvmigrate/listen.toml line 3: unknown key \"max-incomming\"") == true, "\(message ?? "parsed")")
        #expect(message?.contains("max-incoming") == true)
    }

    @Test(arguments: [
        (#"max-incoming = "4""#, "\"max-incoming\" must be a whole number"),
        (#"max-incoming = 4.5"#, "\"max-incoming\" must be a whole number"),
        (#"insecure = "yes""#, "\"insecure\" must be true or false"),
        (#"commit-timeout = "30""#, "\"commit-timeout\" must be a number"),
        (#"allow-source = ["a", 1]"#, "\"allow-source\" must be a string or a list of strings"),
        (#"address = 7500"#, "\"address\" must be a string"),
        ("accept.zstd = true", "\"accept\" must be a string"),
    ])
    func aValueOfTheWrongTypeIsRefusedWithTheKeyAndLine(text: String, expected: String) {
        let message = Self.error(text)
        #expect(message?.contains("listen.toml line 1: \(expected)") == true, "\(message ?? "parsed")")
    }

    @Test func aFileThatIsNotTOMLSaysWhereAndWhatItMustBe() {
        let message = Self.error("max-incoming = 4\nmax-pending: 5\n")
        #expect(message?.contains("listen.toml line 2: not valid TOML") == true, "\(message ?? "parsed")")
        #expect(message?.contains("max-incoming = 4") == true, "says what a line looks like: \(message ?? "")")
    }

    @Test func expandPutsTheFileBeforeTheCommandLineOnlyForListen() throws {
        let path = "/tmp/pvm-config-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).toml"
        try "max-streams = 4\naccept = \"zstd\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        var checked: [String] = []
        let expanded = try ListenConfig.expand(["listen", "--config", path, "--accept", "none"]) { checked.append($0.key) }
        #expect(expanded == ["listen", "--max-streams", "4", "--config", path, "--accept", "none"])
        #expect(checked.sorted() == ["accept", "max-streams"], "each key is checked alone, also one the command line overrides")
        #expect(try ListenConfig.expand(["send", "--config", path]) { _ in } == ["send", "--config", path])
    }

    @Test func aValueTheParserRefusesIsReportedWithTheKeysLine() throws {
        let path = "/tmp/pvm-config-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).toml"
        try "# limits\nmax-streams = 4\nmax-incoming = 0\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        struct Refused: Error, CustomStringConvertible { var description: String }
        #expect {
            _ = try ListenConfig.expand(["listen", "--config=\(path)"]) { entry in
                if entry.key == "max-incoming" { throw Refused(description: "--max-incoming must be at least 1") }
            }
        } throws: { error in
            "\(error)".contains("\(path) line 3: \"max-incoming\": --max-incoming must be at least 1")
        }
        #expect(throws: ConfigError.self) { try ListenConfig.expand(["listen", "--config", path + ".missing"]) { _ in } }
    }
}
