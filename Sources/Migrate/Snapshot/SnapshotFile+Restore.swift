// Restoring and verifying a snapshot (protocol.md §6.6).

import Core
import Foundation

/// How long the steps of a restore took, and what was checked.
public struct SnapshotRestoreReport: Sendable {
    public var buildSeconds = 0.0
    public var memorySeconds = 0.0
    public var stateSeconds = 0.0
    /// Replacing the ballooned pages by zero pages (§6.4).
    public var balloonSeconds = 0.0
    /// Every memory page was checked against the digest (always for the compressed layout).
    public var memoryVerified = false
    /// MSRs the kernel refused (reported, not fatal; §1.8).
    public var refusedMSRs: [UInt32] = []
}

extension SnapshotFile {
    /// Builds the VM this snapshot describes with its memory and state loaded, not started.
    /// Mapped layout: memory is mapped copy-on-write from the file (nothing is read; with
    /// `verify` every page is first checked against the digest); compressed: it is read and
    /// always checked. `configuration` supplies the console and log; size, irqchip and the
    /// memory backing come from the file.
    public func restoreMachine(_ configuration: Machine.Configuration, verify: Bool)
        throws(SnapshotError) -> (Machine, SnapshotRestoreReport) {
        var report = SnapshotRestoreReport()
        var clock = ContinuousClock.now
        func lap() -> Double { let now = ContinuousClock.now; defer { clock = now }; return (now - clock).seconds }
        var c = configuration
        memoryConfiguration(&c)
        let machine: Machine
        do { machine = try Machine(restoring: c) } catch { throw .restore(error.description) }
        report.buildSeconds = lap()
        switch header.layout {
        case .mapped:
            if verify { try checkDigest(machine.memory, candidates: slotsWithData().union(index)) }
            report.memoryVerified = verify
        case .compressed:
            try load(into: machine.memory)
            report.memoryVerified = true
        }
        report.memorySeconds = lap()
        do { report.refusedMSRs = try machine.restore(state) } catch { throw .restore(error.description) }
        report.stateSeconds = lap()
        if let ballooned { discard(ballooned, in: machine.memory) }
        report.balloonSeconds = lap()
        return (machine, report)
    }

    /// `snapshot verify`: every check of `open`, then every memory page against the digest,
    /// without building a VM. Returns the pages that hold data.
    public func verifyMemory() throws(SnapshotError) -> UInt64 {
        let memory: GuestMemory
        do {
            memory = header.layout == .mapped
                ? try GuestMemory(size: header.machine.memoryBytes, mappingFile: file.rawValue, offset: header.memoryOffset)
                : try GuestMemory(size: header.machine.memoryBytes)
        } catch { throw .restore(error.description) }
        switch header.layout {
        case .mapped: try checkDigest(memory, candidates: slotsWithData().union(index))
        case .compressed: try load(into: memory)
        }
        return header.pagesWithData
    }

    /// Ballooned pages read as zeros (§2.5) whatever their slots hold: replaced by anonymous
    /// zero pages, one mapping per run of contiguous pages (found word by word).
    private func discard(_ ballooned: PageBitmap, in memory: GuestMemory) {
        var runs: [(first: Int, count: Int)] = []
        for (w, word) in ballooned.words.enumerated() where word != 0 {
            var bits = word, base = w * 64
            while bits != 0 {
                let start = bits.trailingZeroBitCount
                let length = (~(bits >> UInt64(start))).trailingZeroBitCount
                let first = base + start
                if let last = runs.last, last.first + last.count == first { runs[runs.count - 1].count += length }
                else { runs.append((first, length)) }
                bits = start + length >= 64 ? 0 : bits & ~((UInt64(1) << UInt64(start + length)) - 1)
            }
        }
        for (first, count) in runs {
            // A run may cross the 3 GiB boundary (§1.2): one mapping per region.
            var index = first, left = count
            while left > 0 {
                guard let frame = memory.frame(atIndex: index), let start = frame.address else { break }
                let offsets = memory.regionPageOffsets
                let region = offsets.lastIndex { $0 <= index } ?? 0
                let inRegion = min(left, offsets[region] + memory.regions[region].pageCount - index)
                if let range = GuestRange(start: start, size: UInt64(inRegion) * 4096) { memory.discard(range) }
                index += inRegion
                left -= inRegion
            }
        }
    }
}
