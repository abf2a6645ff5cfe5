import Core
import Posix

/// Everything that can go wrong with a snapshot file (protocol.md §6): writing it, reading
/// and validating it, restoring from it. Messages say what failed and what to do.
public enum SnapshotError: Error, CustomStringConvertible, Equatable {
    /// A system call on the file failed (`operation` names it, with the path).
    case io(operation: String, path: String, errno: Int32)
    /// The file ends before a section the header promises (or is shorter than a header).
    case truncated(path: String, what: String)
    /// A field breaks §6 (`field` names it as the document does).
    case malformed(field: String, reason: String)
    /// A section's bytes do not match their digest in the header.
    case digestMismatch(section: String, expected: UInt64, actual: UInt64)
    /// The state section does not decode (§1.8).
    case state(String)
    /// Saving failed (the engine's reason); no file was left under the final name.
    case save(String)
    /// Building or loading the VM from the file failed.
    case restore(String)

    public var description: String {
        switch self {
        case let .io(op, path, err):
            return "\(op) \(path): \(Errno(err)); check the path and its permissions"
        case let .truncated(path, what):
            return "\(path) is truncated: it ends inside \(what) — the file is incomplete (an interrupted copy?); "
                + "use another snapshot"
        case let .malformed(field, reason):
            return "not a valid pvmigrate snapshot (protocol.md §6): \(field): \(reason)"
        case let .digestMismatch(section, expected, actual):
            return "the snapshot's \(section) is damaged: its digest is 0x\(String(actual, radix: 16)), the header "
                + "says 0x\(String(expected, radix: 16)); the file was changed or corrupted after it was saved — use another snapshot"
        case let .state(why): return "the snapshot's state section does not decode: \(why)"
        case let .save(why): return "save failed: \(why)"
        case let .restore(why): return "restore failed: \(why)"
        }
    }
}
