import Core
import Foundation

/// CPU time spent by one side of a migration (issue 11, item 3: CPU-seconds per GiB of guest
/// memory moved). Every thread that works for the migration measures its own time with
/// getrusage(RUSAGE_THREAD) and adds it here, so the two ends of a migration run in one
/// process (`pvmigrate bench`) are told apart, and nothing else the process does (a running
/// guest's vCPU thread, another VM) is counted.
final class CPUMeter: Sendable {
    private let total = Locked(0.0)

    /// User + system seconds added so far.
    var seconds: Double { total.value }

    /// Runs `body` on the calling thread and adds the CPU time that thread spent in it.
    func measure<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        let start = Self.threadSeconds()
        defer {
            let spent = Self.threadSeconds() - start
            total.withLock { $0 += max(0, spent) }
        }
        return try body()
    }

    /// Adds `seconds` a thread measured itself (`threadSeconds` differences).
    func add(_ seconds: Double) {
        total.withLock { $0 += max(0, seconds) }
    }

    /// RUSAGE_THREAD (Linux, getrusage(2)): a GNU-only macro Swift does not import.
    private static let rusageThread: Int32 = 1

    /// The calling thread's user + system CPU time, in seconds (microsecond resolution).
    static func threadSeconds() -> Double {
        var usage = rusage()
        guard getrusage(rusageThread, &usage) == 0 else { return 0 }
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }
}
