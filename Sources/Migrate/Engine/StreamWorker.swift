import Foundation

/// A thread that runs one job at a time until stopped (a stream's sender for the whole
/// migration).
final class StreamWorker: @unchecked Sendable {
    private let condition = NSCondition()
    private var job: (@Sendable () -> Void)? // guarded by `condition`
    private var stopped = false              // guarded by `condition`

    init() {
        Thread.detachNewThread { [self] in loop() }
    }

    /// Runs `job` on the worker's thread; the caller waits for it by its own means.
    func run(_ job: @escaping @Sendable () -> Void) {
        condition.withLock {
            precondition(self.job == nil, "a stream worker got a job while busy")
            self.job = job
            condition.broadcast()
        }
    }

    /// Ends the thread once its current job (if any) is done.
    func stop() {
        condition.withLock {
            stopped = true
            condition.broadcast()
        }
    }

    private func loop() {
        while true {
            condition.lock()
            while job == nil && !stopped { condition.wait() }
            guard let next = job else {
                condition.unlock()
                return
            }
            job = nil
            condition.unlock()
            next()
        }
    }
}
