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
/// decision: `started <32 hex digits> <unix seconds>` or `aborted …` (a line without the time,
/// as version 2.0 wrote them, counts as decided at load). Lines that do not parse — a torn
/// last line after a crash, whose decision never took effect because the fsync had not
/// returned — are skipped.
///
/// Bounded by age (protocol.md §3.6.4): a decision older than `retention` (default 30 days)
/// is forgotten — at load, and while running once every `pruneInterval` decisions — and the
/// file is rewritten without it (a new file, fsync'd, renamed over the old one). No session
/// lives that long, so no GO can still arrive for a forgotten id; a source unresolved for
/// longer than the retention gets "unknown" and must be settled by an operator
/// (`recover --force-…`, protocol.md §3.6.5).
public final class OutcomeTable: @unchecked Sendable {
    public let path: String?
    /// Decisions older than this (seconds) are forgotten.
    public let retention: Double
    /// The table is pruned after this many decisions (and at load).
    static let pruneInterval = 1024
    /// The default retention: 30 days.
    public static let defaultRetention: Double = 30 * 86_400
    private let lock = NSLock()
    private var decisions: [[UInt8]: (outcome: CommitOutcome, time: Double)] = [:] // guarded by `lock`
    private var sincePrune = 0 // guarded by `lock`
    private var writeSeconds: [Double] = [] // guarded by `lock`: the last few decisions' writes
    private let clock: @Sendable () -> Double

    /// `path` nil: in memory only (a test, or a listener without a runtime directory).
    /// `clock`: the current time in seconds since 1970 (a test moves it).
    public init(path: String?, retention: Double = OutcomeTable.defaultRetention,
                clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) throws(MigrationError) {
        self.path = path
        self.retention = retention
        self.clock = clock
        guard let path else { return }
        guard let data = FileManager.default.contents(atPath: path) else {
            if access(path, F_OK) == 0 {
                throw .outcomeTable("cannot read the outcome table \(path): check its permissions")
            }
            return
        }
        let now = clock()
        var canonical = true // every line parses, carries its time and names a new id
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let words = line.split(separator: " ")
            canonical = canonical && words.count == 3
            guard (2...3).contains(words.count), let id = Self.id(fromHex: words[1]) else { canonical = false; continue }
            let time = words.count == 3 ? Double(words[2]).flatMap { $0.isFinite ? $0 : nil } : now
            guard let time else { canonical = false; continue }
            canonical = canonical && decisions[id] == nil
            switch words[0] {
            case "started": decisions[id] = (.started, time)
            case "aborted": decisions[id] = decisions[id] ?? (.aborted, time)
            default: canonical = false
            }
        }
        try prune(force: !canonical) // no other thread knows `self` yet: no lock needed
    }

    /// The median of the last few decisions' writes (seconds; an fsync each with a file, 0
    /// before the first): the destination's estimate of its "started" record in the commit
    /// (`CommitWorkEstimate`).
    public var recentWriteSeconds: Double {
        lock.withLock { writeSeconds.isEmpty ? 0 : writeSeconds.sorted()[(writeSeconds.count - 1) / 2] }
    }

    /// The number of decisions remembered.
    public var count: Int { lock.withLock { decisions.count } }

    /// The decision recorded for `id`, `.unknown` when there is none.
    public func lookup(_ id: [UInt8]) -> CommitOutcome {
        lock.withLock { decisions[id]?.outcome ?? .unknown }
    }

    /// Records `outcome` for `id` unless a decision exists; returns the decision in force.
    /// "started" is on disk (fsync'd) when this returns it; if it cannot be written, the
    /// decision becomes "aborted" in memory and the error is thrown.
    @discardableResult
    public func decide(_ id: [UInt8], _ outcome: CommitOutcome) throws(MigrationError) -> CommitOutcome {
        precondition(outcome != .unknown)
        lock.lock()
        defer { lock.unlock() }
        if let existing = decisions[id] { return existing.outcome }
        let now = clock(), began = ContinuousClock.now
        do {
            try append(Self.line(id, outcome, now))
            writeSeconds.append((ContinuousClock.now - began).seconds)
            if writeSeconds.count > 5 { writeSeconds.removeFirst() }
        } catch {
            decisions[id] = (.aborted, now)
            if outcome == .started { throw error }
            return .aborted // an "aborted" kept in memory still fences this process
        }
        decisions[id] = (outcome, now)
        sincePrune += 1
        try? prune(force: false) // a failed rewrite leaves the longer file, which is still right
        return outcome
    }

    static func line(_ id: [UInt8], _ outcome: CommitOutcome, _ time: Double) -> String {
        "\(outcome) \(hex(id)) \(Int64(time.rounded(.down)))\n"
    }

    /// `lock` held. Forgets decisions older than `retention`; rewrites the file when any went
    /// (or `force`). Runs at load and after every `pruneInterval` decisions.
    private func prune(force: Bool) throws(MigrationError) {
        guard force || sincePrune >= Self.pruneInterval else { return }
        sincePrune = 0
        let cutoff = clock() - retention
        let before = decisions.count
        decisions = decisions.filter { $0.value.time >= cutoff }
        guard force || decisions.count < before, let path else { return }
        let text = decisions.sorted { $0.value.time < $1.value.time }.map { Self.line($0.key, $0.value.outcome, $0.value.time) }.joined()
        let temporary = path + ".new"
        let file: FileDescriptor
        do { file = try FileDescriptor.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600) } catch {
            throw .outcomeTable("cannot rewrite the outcome table \(temporary): \(error)")
        }
        do throws(Errno) {
            try Self.writeDurably(text, to: file)
            _ = try syscall { rename(temporary, path) }
        } catch {
            unlink(temporary)
            throw .outcomeTable("cannot rewrite the outcome table \(path): \(error)")
        }
        syncDirectory()
    }

    /// Writes all of `text` to `file` and fsyncs it, then closes it (EINTR retried, short
    /// writes continued, through Posix).
    private static func writeDurably(_ text: String, to file: FileDescriptor) throws(Errno) {
        defer { file.close() }
        try file.writeAll(Array(text.utf8))
        _ = try file.call { fsync($0) }
    }

    /// fsync of the table's directory, so a new or renamed file's entry is durable. Best effort:
    /// the decision itself is already on disk.
    private func syncDirectory() {
        guard let path,
              let dir = try? FileDescriptor.open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY)
        else { return }
        _ = try? dir.call { fsync($0) }
        dir.close()
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
        let file: FileDescriptor
        do { file = try FileDescriptor.open(path, O_WRONLY | O_APPEND | O_CREAT, mode: 0o600) } catch {
            throw .outcomeTable("cannot open the outcome table \(path): \(error)")
        }
        do throws(Errno) { try Self.writeDurably(line, to: file) } catch {
            throw .outcomeTable("cannot write the outcome table \(path): \(error)")
        }
        if fresh { syncDirectory() } // the new file's directory entry must be durable too
    }

    /// Lower-case hex, two digits a byte. Not `String(format:)`: it runs in the commit (the
    /// "started" line, GO → DONE), where its first call in a process took 0.3–0.5 ms and later
    /// ones 20–30 µs for an id (docs/benchmarks.md "The pause rehearsed in its own conditions").
    public static func hex(_ id: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(id.count * 2)
        for byte in id { out.append(digits[Int(byte >> 4)]); out.append(digits[Int(byte & 0xf)]) }
        return String(decoding: out, as: UTF8.self)
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
