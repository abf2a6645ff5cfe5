// The one place pvmigrate turns an errno into text (style.md "swift-system / swift-nio").

#if canImport(Glibc)
import Glibc
#endif

/// A POSIX error number. `description` is pvmigrate's only errno formatter:
/// strerror's text, first letter lowercased so it reads inside a sentence, plus the number —
/// "connection refused (errno 111)".
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32

    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's `errno`, read now (before anything else can overwrite it).
    public static var current: Errno { Errno(errno) }

    public var description: String {
        // Sound: strerror returns a pointer to a NUL-terminated string that stays valid
        // until the next strerror call on this thread; it is copied at once.
        let text = String(cString: strerror(rawValue))
        return "\(text.prefix(1).lowercased())\(text.dropFirst()) (errno \(rawValue))"
    }
}
