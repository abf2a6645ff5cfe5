import Synchronization

/// A value behind a mutex, shareable by reference (Mutex itself cannot be copied into closures).
public final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    public init(_ value: Value) { mutex = Mutex(value) }
    public func withLock<R>(_ body: (inout sending Value) -> sending R) -> R { mutex.withLock(body) }
    public var value: Value { mutex.withLock { $0 } }
}
