#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Posix

/// The destination's record of what it decided for each migration that reached PREPARED
/// (protocol.md §3.6.4): "started" is written and fsync'd *before* the guest starts, so the
/// record is the decision and it survives a crash or kill of the listener; a source that lost
/// the end of its migration asks for it with RESOLVE.
///
/// The first decision for an id wins: a RESOLVE that arrives while the session still awaits GO
/// decides "aborted", and the GO that follows can no longer start the guest.
///
/// The file (`<runtime>/outcomes` for `pvmigrate listen`) is append-only text, one line per
/// decision: `started <32 hex digits>` or `aborted <32 hex digits>`. Lines that do not parse —
/// a torn last line after a crash, whose decision never took effect because the fsync had not
/// returned — are skipped. It grows by one line per migration (about 40 bytes); pruning old
/// entries is not done yet.
public final class OutcomeTable: @unchecked Sendable {
    public let path: String?
    private let lock = NSLock()
    private var decisions: [[UInt8]: CommitOutcome] = [:] // guarded by `lock`

    /// `path` nil: in memory only (a test, or a listener without a runtime directory).
    public init(path: String?) throws(MigrationError) {
        self.path = path
        guard let path else { return }
        guard let data = FileManager.default.contents(atPath: path) else {
            if access(path, F_OK) == 0 {
                throw .outcomeTable("cannot read the outcome table \(path): check its permissions")
            }
            return
        }
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count == 2, let id = Self.id(fromHex: words[1]) else { continue }
            switch words[0] {
            case "started": decisions[id] = .started
            case "aborted": decisions[id] = decisions[id] ?? .aborted
            default: continue
            }
        }
    }

    /// The decision recorded for `id`, `.unknown` when there is none.
    public func lookup(_ id: [UInt8]) -> CommitOutcome {
        lock.withLock { decisions[id] ?? .unknown }
    }

    /// Records `outcome` for `id` unless a decision exists; returns the decision in force.
    /// "started" is on disk (fsync'd) when this returns it; if it cannot be written, the
    /// decision becomes "aborted" in memory and the error is thrown.
    @discardableResult
    public func decide(_ id: [UInt8], _ outcome: CommitOutcome) throws(MigrationError) -> CommitOutcome {
        precondition(outcome != .unknown)
        lock.lock()
        defer { lock.unlock() }
        if let existing = decisions[id] { return existing }
        do {
            try append("\(outcome) \(Self.hex(id))\n")
        } catch {
            decisions[id] = .aborted
            if outcome == .started { throw error }
            return .aborted // an "aborted" kept in memory still fences this process
        }
        decisions[id] = outcome
        return outcome
    }

    /// A RESOLVE for `id`: the decision when there is one; otherwise records "aborted" (so the
    /// guest can never start here afterwards) and answers "aborted" when the migration is still
    /// in progress here (`active`), "unknown" when this host has never heard of it.
    public func resolve(_ id: [UInt8], active: Bool) -> CommitOutcome {
        let before = lookup(id)
        if before != .unknown { return before }
        let decided = (try? decide(id, .aborted)) ?? .aborted
        if decided == .started { return .started }
        return active ? .aborted : .unknown
    }

    /// `lock` held.
    private func append(_ line: String) throws(MigrationError) {
        guard let path else { return }
        let fresh = access(path, F_OK) != 0
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .outcomeTable("cannot open the outcome table \(path): \(Errno.current.description)") }
        defer { close(fd) }
        let bytes = Array(line.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fsync(fd) == 0 else {
            throw .outcomeTable("cannot write the outcome table \(path): \(Errno.current.description)")
        }
        if fresh { // the new file's directory entry must be durable too
            let dir = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dir >= 0 { _ = fsync(dir); close(dir) }
        }
    }

    public static func hex(_ id: [UInt8]) -> String {
        id.map { String(format: "%02x", $0) }.joined()
    }

    public static func id(fromHex text: some StringProtocol) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count == 32 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: 32, by: 2) {
            guard let byte = UInt8(String(decoding: chars[i...i + 1], as: UTF8.self), radix: 16) else { return nil }
            out.append(byte)
        }
        return out
    }
}
