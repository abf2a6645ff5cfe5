import ArgumentParser
import Core
import Foundation

enum DirtyLogChoice: String, ExpressibleByArgument, CaseIterable {
    case off, kvm, pv, hybrid
    var mode: DirtySourceMode? { DirtySourceMode(rawValue: rawValue) }
}

/// `run --dirty-log`: tracks dirty pages the way a migration would (harvest every interval)
/// without sending anything, to measure what dirty tracking costs the guest.
final class DirtyLogDriver: @unchecked Sendable {
    private let machine: Machine
    private let mode: DirtySourceMode
    private let stopped = Locked(false)
    private let stats = Locked((harvests: 0, pages: 0, kvm: 0, pv: 0))
    private let done = DispatchSemaphore(value: 0)

    init(machine: Machine, mode: DirtySourceMode, intervalMs: Int) {
        self.machine = machine
        self.mode = mode
        Thread.detachNewThread { [self] in
            defer { done.signal() }
            // A PV mode needs the guest's registration, which happens early in its boot.
            let deadline = Date(timeIntervalSinceNow: 5)
            while mode != .kvm, !machine.pv.isRegistered, Date() < deadline, !stopped.value {
                Thread.sleep(forTimeInterval: 0.005)
            }
            guard !stopped.value, machine.exit == nil else { return }
            let tracker: DirtyTracker
            do {
                tracker = try DirtyTracker(machine: machine, mode: mode)
                try tracker.start()
            } catch {
                Diagnostics.note("dirty log \(mode.rawValue): \(error)")
                return
            }
            Diagnostics.note("dirty log \(mode.rawValue): on, harvesting every \(intervalMs) ms")
            while !stopped.value, machine.exit == nil {
                Thread.sleep(forTimeInterval: Double(intervalMs) / 1000)
                guard let round = try? tracker.harvest(vcpusPaused: false) else { break }
                stats.withLock {
                    $0.harvests += 1; $0.pages += round.pages.count
                    $0.kvm += round.kvm?.count ?? 0; $0.pv += round.pv?.count ?? 0
                }
            }
            tracker.stop()
        }
    }

    func finish() {
        stopped.withLock { $0 = true }
        done.wait()
        let s = stats.value
        guard s.harvests > 0 else { return }
        Diagnostics.note("dirty log \(mode.rawValue): \(s.harvests) harvests, \(s.pages) dirty pages "
            + "(kvm \(s.kvm), pv \(s.pv)), \(s.pages / s.harvests) per harvest")
    }
}
