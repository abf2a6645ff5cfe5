import ArgumentParser
import Core

enum DirtyLogChoice: String, ExpressibleByArgument, CaseIterable {
    case off, kvm, pv, hybrid
    var mode: DirtySourceMode? { DirtySourceMode(rawValue: rawValue) }
}

/// `run --dirty-log`: prints what Core's `DirtyHarvestLoop` (tracking dirty pages the way a
/// migration would, without sending anything) reports, to measure what tracking costs the guest.
/// scripts/bench-dirty.sh reads the guest's progress lines, not these.
struct DirtyLogPrinter {
    private let loop: DirtyHarvestLoop

    init(machine: Machine, mode: DirtySourceMode, intervalMs: Int) {
        loop = DirtyHarvestLoop(machine: machine, mode: mode, intervalMilliseconds: intervalMs) { event in
            switch event {
            case .started: Diagnostics.note("dirty log \(mode.rawValue): on, harvesting every \(intervalMs) ms")
            case let .failed(error): Diagnostics.note("dirty log \(mode.rawValue): \(error)")
            }
        }
    }

    func finish() {
        let t = loop.finish()
        guard t.harvests > 0 else { return }
        Diagnostics.note("dirty log \(loop.mode.rawValue): \(t.harvests) harvests, \(t.pages) dirty pages "
            + "(kvm \(t.kvm), pv \(t.pv)), \(t.pagesPerHarvest) per harvest")
    }
}
