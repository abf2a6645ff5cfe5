#if canImport(Glibc)
import Glibc
#endif

/// An eventfd(2) used as a wake-up: one writer adds 1, the waiter polls it and resets it.
/// The descriptor is created non-blocking (CKVM's `ckvm_eventfd`), so a reset with nothing
/// signalled returns at once.
public enum EventCounter {
    /// Adds 1 to the eventfd `fd`: a thread polling it wakes.
    public static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(fd, $0.baseAddress, 8) }
    }

    /// Reads the eventfd `fd`'s counter back to 0 (what was signalled has been seen).
    public static func reset(_ fd: Int32) {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { read(fd, $0.baseAddress, 8) }
    }
}
