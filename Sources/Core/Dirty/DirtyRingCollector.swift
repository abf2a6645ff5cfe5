import CKVM

/// Collects a machine's KVM dirty rings (one per vCPU, `KVMDirtyRing`) into a pending page
/// set, between harvests and on ring-full exits, with the watchdog that stops trusting them.
/// `KVMRingSource` (DirtySource.swift) harvests it.
///
/// Enabled only when the configuration asks (`kvmDirtyRingEntries`). With the ring on,
/// KVM's dirty bitmap is unavailable for this VM; the ring then is the KVM source.
final class DirtyRingCollector: @unchecked Sendable {
    /// Consecutive ring-full exits that yielded nothing before the watchdog gives up.
    static let watchdogLimit = 4

    let rings: [KVMDirtyRing]
    private let lock = Locked(Guarded())

    struct Guarded: @unchecked Sendable {
        var pending: PageBitmap?
        var emptyFullExits = 0
        var broken = false
        var invalidEntries = 0
        var fullExits = 0
    }

    init(rings: [KVMDirtyRing]) { self.rings = rings }

    /// Collects every ring into the pending set and resets them. Returns pages collected.
    func drain(memory: GuestMemory, vm: VirtualMachine) -> Int {
        lock.withLock { g in
            var bitmap = g.pending ?? PageBitmap(pageCount: memory.pageCount)
            var collected = 0
            for ring in rings {
                let r = ring.collect(into: &bitmap, memory: memory)
                collected += r.collected
                g.invalidEntries += r.invalid
            }
            g.pending = bitmap
            if collected > 0 { _ = try? vm.resetDirtyRings() }
            return collected
        }
    }

    /// KVM_EXIT_DIRTY_RING_FULL on a vCPU thread. False once the watchdog has seen the
    /// ring fill repeatedly with nothing to harvest (the PVM failure mode): the caller
    /// ends the VM rather than spin, and the ring's reports are never trusted again.
    func ringFull(memory: GuestMemory, vm: VirtualMachine) -> Bool {
        let collected = drain(memory: memory, vm: vm)
        return lock.withLock { g in
            g.fullExits += 1
            if collected == 0 { g.emptyFullExits += 1 } else { g.emptyFullExits = 0 }
            if g.emptyFullExits >= Self.watchdogLimit { g.broken = true }
            return !g.broken
        }
    }

    /// Drains, then takes the pending set. `broken` means some pages may be missing.
    func harvest(memory: GuestMemory, vm: VirtualMachine) -> (pages: PageBitmap, broken: Bool) {
        _ = drain(memory: memory, vm: vm)
        return lock.withLock { g in
            let pages = g.pending ?? PageBitmap(pageCount: memory.pageCount)
            g.pending = nil
            return (pages, g.broken)
        }
    }

    var isBroken: Bool { lock.withLock { $0.broken } }
}
