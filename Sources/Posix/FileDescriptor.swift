// The one owning file-descriptor type: sockets (migration streams, control sockets) and
// pipes. KVM descriptors wrap one too (Core/KVM/KVMFileDescriptor.swift).

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An owned file descriptor with a close protocol that is safe against other threads
/// using it at the same time.
///
/// `close()` shuts the descriptor down at once — for a socket that wakes any thread
/// blocked in recv/send/poll/accept on it — but close(2) itself runs only when the last
/// operation that `enter()`ed has `leave()`n. So a blocked thread never touches a
/// descriptor number that was closed and reused by another open in the meantime. Without
/// `close()`, the descriptor is closed on deinit.
public final class FileDescriptor: Sendable {
    /// The descriptor number. Use it only between `enter()` and `leave()` (or via
    /// `withDescriptor`) when another thread may call `close()`.
    public let rawValue: Int32
    private let lifecycle = Mutex(Lifecycle())

    private struct Lifecycle {
        var active = 0
        var closing = false
        var released = false
    }

    /// Takes ownership of `rawValue`, which must be an open descriptor.
    public init(owning rawValue: Int32) { self.rawValue = rawValue }

    /// open(2) with O_CLOEXEC added, retrying EINTR.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(Errno) -> FileDescriptor {
        let fd = try syscall { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(owning: fd)
    }

    /// pipe(2) with both ends close-on-exec.
    public static func pipe() throws(Errno) -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        // Sound: pipe writes exactly two descriptors into the two-element array.
        _ = try syscall { fds.withUnsafeMutableBufferPointer { Glibc.pipe($0.baseAddress!) } }
        let ends = (read: FileDescriptor(owning: fds[0]), write: FileDescriptor(owning: fds[1]))
        ends.read.setCloseOnExec()
        ends.write.setCloseOnExec()
        return ends
    }

    deinit {
        let released = lifecycle.withLock { $0.released }
        if !released { _ = Glibc.close(rawValue) }
    }

    // MARK: Lifecycle

    /// Marks an operation in progress. Throws EBADF once `close()` ran.
    public func enter() throws(Errno) {
        try lifecycle.withLock { (state) throws(Errno) in
            if state.closing { throw Errno(EBADF) }
            state.active += 1
        }
    }

    /// Ends an operation begun with `enter()`; closes the descriptor if `close()` ran
    /// meanwhile and this was the last operation.
    public func leave() {
        let release = lifecycle.withLock { state in
            state.active -= 1
            guard state.closing, state.active == 0, !state.released else { return false }
            state.released = true
            return true
        }
        if release { _ = Glibc.close(rawValue) }
    }

    /// Runs the libc call `body` on the descriptor between `enter()` and `leave()`,
    /// retrying EINTR: its non-negative result, or the `Errno` of its failure (EBADF once
    /// `close()` ran). The errno is read before `leave()` can close anything.
    public func call<T: BinaryInteger>(_ body: (Int32) -> T) throws(Errno) -> T {
        try enter()
        defer { leave() }
        return try syscall { body(rawValue) }
    }

    /// write(2) of all of `bytes`: short writes continued, EINTR retried. For files (a socket
    /// stream has its own send loop); a write that makes no progress fails with EIO.
    public func writeAll(_ bytes: [UInt8]) throws(Errno) {
        var written = 0
        while written < bytes.count {
            // Sound: `written < bytes.count`, so the pointer and the length stay inside `bytes`'
            // storage, which is pinned for the call.
            let n = try call { fd in bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) } }
            guard n > 0 else { throw Errno(EIO) }
            written += n
        }
    }

    /// True once `close()` has been called.
    public var isClosing: Bool { lifecycle.withLock { $0.closing } }

    /// shutdown(2) now (unblocking other threads' socket calls; ENOTSOCK on anything else
    /// is harmless), close(2) once no operation is inside. Idempotent.
    public func close() {
        let release = lifecycle.withLock { state in
            guard !state.closing else { return false }
            state.closing = true
            // Under the lock, so the descriptor cannot have been released yet.
            // ENOTCONN (never connected) and ENOTSOCK are harmless.
            _ = shutdown(rawValue, Int32(SHUT_RDWR))
            guard state.active == 0 else { return false }
            state.released = true
            return true
        }
        if release { _ = Glibc.close(rawValue) }
    }

    // MARK: Flags

    /// FD_CLOEXEC, for descriptors that come from calls without a CLOEXEC flag (accept).
    public func setCloseOnExec() {
        _ = fcntl(rawValue, F_SETFD, FD_CLOEXEC)
    }

    /// O_NONBLOCK on or off.
    public func setNonBlocking(_ nonBlocking: Bool) throws(Errno) {
        let flags = try syscall { fcntl(rawValue, F_GETFL) }
        let wanted = nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        guard wanted != flags else { return }
        _ = try syscall { fcntl(rawValue, F_SETFL, wanted) }
    }
}
