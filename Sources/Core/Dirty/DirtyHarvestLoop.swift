import Foundation

/// Tracks a running machine's dirty pages the way a migration would — a `DirtyTracker`
/// harvested every `interval` — without sending anything, to measure what dirty tracking
/// costs the guest (`pvmigrate run --dirty-log`). The loop runs on its own thread from
/// `init` until `finish()` or the machine's exit; the host only reports the events and the
/// totals.
public final class DirtyHarvestLoop: @unchecked Sendable {
    /// What the loop reports while it runs (on its own thread).
    public enum Event: Sendable {
        /// Tracking is on; the first harvest follows after one interval.
        case started
        /// The tracker could not be set up or started: the loop ends without harvesting.
        case failed(DirtyTrackingError)
    }

    /// Totals over every harvest so far.
    public struct Totals: Sendable, Equatable {
        public var harvests = 0
        /// Dirty pages summed over the harvests (what a migration would have sent).
        public var pages = 0
        /// Of those harvests' KVM and PV reports, the pages each source reported.
        public var kvm = 0
        public var pv = 0
        /// Pages per harvest (0 before the first).
        public var pagesPerHarvest: Int { harvests > 0 ? pages / harvests : 0 }
    }

    public let mode: DirtySourceMode
    public let intervalMilliseconds: Int
    private let stopped = Locked(false)
    private let totals = Locked(Totals())
    private let done = DispatchSemaphore(value: 0)

    /// How long a PV mode waits for the guest to register the PV interface (early in its
    /// boot) before it tries anyway (and `DirtyTracker` then reports why it cannot).
    static let registrationWait: TimeInterval = 5

    public init(machine: Machine, mode: DirtySourceMode, intervalMilliseconds: Int,
                events: @escaping @Sendable (Event) -> Void) {
        self.mode = mode
        self.intervalMilliseconds = intervalMilliseconds
        Thread.detachNewThread { [self] in
            defer { done.signal() }
            run(machine: machine, events: events)
        }
    }

    private func run(machine: Machine, events: @Sendable (Event) -> Void) {
        // A PV mode needs the guest's registration, which happens early in its boot.
        let deadline = Date(timeIntervalSinceNow: Self.registrationWait)
        while mode != .kvm, !machine.pv.isRegistered, Date() < deadline, !stopped.value {
            Thread.sleep(forTimeInterval: 0.005)
        }
        guard !stopped.value, machine.exit == nil else { return }
        let tracker: DirtyTracker
        do throws(DirtyTrackingError) {
            tracker = try DirtyTracker(machine: machine, mode: mode)
            try tracker.start()
        } catch {
            events(.failed(error))
            return
        }
        events(.started)
        while !stopped.value, machine.exit == nil {
            Thread.sleep(forTimeInterval: Double(intervalMilliseconds) / 1000)
            guard let round = try? tracker.harvest(vcpusPaused: false) else { break }
            totals.withLock {
                $0.harvests += 1; $0.pages += round.pages.count
                $0.kvm += round.kvm?.count ?? 0; $0.pv += (round.pv?.count ?? 0) + round.alwaysDirtyPages
            }
        }
        tracker.stop()
    }

    /// Stops the loop, waits for its thread to stop tracking, and returns the totals.
    public func finish() -> Totals {
        stopped.withLock { $0 = true }
        done.wait()
        return totals.value
    }
}
