import Core
import Foundation

/// Waiting on conditions, never on time: a test waits for what the guest or the host
/// reports, and its deadline only bounds a hang. On a clean 2-core CI machine a spinning
/// guest owns a core and other suites run beside this one, so "the guest must have done X
/// within Y seconds" is never a safe assumption.
public enum Wait {
    /// The default deadline: generous, because it only bounds a hang.
    public static let hangBound: Double = 120

    /// Re-checks `condition` until it holds or `timeout` seconds pass; true when it held.
    @discardableResult
    public static func until(timeout: Double = hangBound, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        var interval = 0.001
        while true {
            if try condition() { return true }
            if ContinuousClock.now >= deadline { return false }
            Thread.sleep(forTimeInterval: interval) // not a condition: the interval between two checks of it
            interval = min(interval * 2, 0.05)
        }
    }
}

/// What the built-in guest reports through its PV control page (protocol.md §2.6), waited on.
extension Machine {
    /// The guest's count of page writes (0 before it registered).
    public var guestPagesWritten: UInt64 { pv.guestCounters?.pagesWritten ?? 0 }

    /// What the guest reported for `round`: the pages it logged and its always-dirty ranges,
    /// whole (the tracker adds them only in part when KVM's log vouches for them, §3.5.1).
    public func guestReport(_ round: DirtyRound) -> PageBitmap? {
        guard var report = round.pv else { return nil }
        for range in pv.alwaysDirtyPageRanges { report.insert(range: range.lowerBound, count: range.count) }
        return report
    }

    /// Passes over its working set the guest has completed.
    public var guestPasses: UInt64 { pv.guestCounters?.passes ?? 0 }

    /// Waits until the guest has registered its PV control page.
    public func waitUntilRegistered(timeout: Double = Wait.hangBound) -> Bool {
        Wait.until(timeout: timeout) { pv.isRegistered }
    }

    /// Waits until the guest's page counter passes `count`: the guest is making progress.
    public func waitForPagesWritten(beyond count: UInt64, timeout: Double = Wait.hangBound) -> Bool {
        Wait.until(timeout: timeout) { guestPagesWritten > count || exit != nil } && guestPagesWritten > count
    }

    /// Waits until the guest has completed `passes` passes over its working set.
    public func waitForPasses(_ passes: UInt64, timeout: Double = Wait.hangBound) -> Bool {
        Wait.until(timeout: timeout) { guestPasses >= passes || exit != nil } && guestPasses >= passes
    }
}
