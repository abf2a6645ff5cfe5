// The retrying system-call helpers: every libc call in pvmigrate that can fail with EINTR
// goes through one of these (the model: swift-system's Syscalls.swift, NIO's System.swift).

#if canImport(Glibc)
import Glibc
#endif

/// Calls `call` until it does not fail with EINTR and returns its result as is: a
/// non-negative value, or -1 with `errno` still set by the call. For the hot paths that
/// hand errno on as a value (`Socket.send`) and for calls whose caller inspects errno.
@inlinable
public func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> T {
    while true {
        let result = call()
        if result >= 0 || errno != EINTR { return result }
    }
}

/// Calls `call` until it does not fail with EINTR; returns its non-negative result or
/// throws the `Errno` of its failure. `call` must follow libc's convention: -1 and errno.
@inlinable
public func syscall<T: BinaryInteger>(_ call: () -> T) throws(Errno) -> T {
    let result = retryingEINTR(call)
    if result < 0 { throw Errno.current }
    return result
}
