import Core
import Foundation

/// A VM's console as the control socket serves it (protocol.md §4 `console`): keeps the last
/// 256 KiB, fans new output out to subscribers, and optionally echoes it to standard output
/// (`pvmigrate run` in the foreground).
///
/// `console(_:)` runs on the vCPU thread, so it never waits for a subscriber: each one has its
/// own queue, and a subscriber that falls more than 1 MiB behind loses the oldest part (and
/// is told so in the text).
public final class ConsoleRing: ConsoleSink, @unchecked Sendable {
    public static let capacity = 256 << 10
    static let subscriberBacklog = 1 << 20

    private let echo: Bool
    private let lock = NSLock()
    // Guarded by `lock`:
    private var bytes: [UInt8] = []
    private var subscribers: [ObjectIdentifier: Subscription] = [:]
    private var finished = false

    public init(echo: Bool = false) {
        self.echo = echo
    }

    public func console(_ output: [UInt8]) {
        guard !output.isEmpty else { return }
        lock.withLock {
            bytes += output
            // Trim in steps so appending stays amortised O(n).
            if bytes.count > 2 * Self.capacity { bytes.removeFirst(bytes.count - Self.capacity) }
            for s in subscribers.values { s.append(output) }
        }
        if echo { FileHandle.standardOutput.write(Data(output)) }
    }

    /// The most recent output, at most 256 KiB, starting at a character boundary.
    public var recent: [UInt8] {
        lock.withLock { Self.tail(bytes) }
    }

    /// Starts following the console: the subscription first yields the recent output, then
    /// new output as it comes, and ends (`next()` returns nil) after `finish()` or `cancel()`.
    public func subscribe() -> Subscription {
        let s = Subscription()
        lock.withLock {
            s.append(Self.tail(bytes))
            if finished { s.finish() } else { subscribers[ObjectIdentifier(s)] = s }
            s.owner = self
        }
        return s
    }

    /// The VM is gone: subscriptions end once they have delivered what they hold.
    public func finish() {
        let all = lock.withLock { () -> [Subscription] in
            finished = true
            defer { subscribers = [:] }
            return Array(subscribers.values)
        }
        all.forEach { $0.finish() }
    }

    fileprivate func remove(_ s: Subscription) {
        _ = lock.withLock { subscribers.removeValue(forKey: ObjectIdentifier(s)) }
    }

    private static func tail(_ bytes: [UInt8]) -> [UInt8] {
        var start = max(0, bytes.count - capacity)
        // Do not begin inside a UTF-8 sequence.
        while start < bytes.count, start > 0, bytes[start] & 0xc0 == 0x80 { start += 1 }
        return Array(bytes[start...])
    }

    /// One follower's queue.
    public final class Subscription: @unchecked Sendable {
        private let condition = NSCondition()
        // Guarded by `condition`:
        private var pending: [UInt8] = []
        private var ended = false
        private var cancelled = false
        fileprivate weak var owner: ConsoleRing?

        fileprivate func append(_ output: [UInt8]) {
            condition.withLock {
                pending += output
                if pending.count > ConsoleRing.subscriberBacklog {
                    pending.removeFirst(pending.count - ConsoleRing.subscriberBacklog / 2)
                    pending = Array("\n[pvmigrate: console output dropped: this follower fell behind]\n".utf8) + pending
                }
                condition.broadcast()
            }
        }

        fileprivate func finish() {
            condition.withLock { ended = true; condition.broadcast() }
        }

        /// The next piece of output (waits for it); nil when the console ended or the
        /// subscription was cancelled and nothing is left.
        public func next() -> [UInt8]? {
            condition.withLock {
                while pending.isEmpty, !ended, !cancelled { condition.wait() }
                if cancelled || pending.isEmpty { return nil }
                defer { pending = [] }
                return pending
            }
        }

        /// Stops following; a blocked `next()` returns nil.
        public func cancel() {
            condition.withLock { cancelled = true; condition.broadcast() }
            owner?.remove(self)
        }
    }
}
