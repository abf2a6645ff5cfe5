// `save`: a migration to a file (protocol.md §6). The same pre-copy loop, downtime target,
// verification sweep and digests as a migration to a peer; the "destination" is a file.

import Core
import Foundation

/// What `save` produced: the engine's statistics (as `send` reports them) and the file.
public struct SnapshotSaved: Sendable, Codable, Equatable {
    public var path: String
    public var layout: String
    /// The file's size, and the bytes it occupies on disk (holes take none).
    public var fileBytes: UInt64
    public var allocatedBytes: UInt64
    public var stats: MigrationStats
}

extension MigrationSender {
    /// Saves the machine to `path` (protocol.md §6.5). With `live`, pre-copy rounds write to
    /// the file while the guest runs, then a pause of at most the downtime target writes the
    /// rest and the state; without it the guest is paused for the whole memory. Afterwards
    /// the guest runs again — unless `stopAfter`, then it is stopped once the file is
    /// complete. On failure no file exists under `path` and the guest runs as before.
    public func save(to path: String, layout: SnapshotLayout, live: Bool, stopAfter: Bool,
                     progress: @escaping @Sendable (RoundStats) -> Void = { _ in }) throws(SnapshotError) -> SnapshotSaved {
        do { try options.validate() } catch { throw .save(error.description) }
        let started = ContinuousClock.now
        let cpu = CPUMeter(), threadCPUAtStart = CPUMeter.threadSeconds()
        let writer = try SnapshotFileWriter(path: path)
        let memory = machine.memory
        var header = SnapshotHeader(layout: layout, machine: MachineDescription(
            memoryBytes: memory.size, vcpus: UInt32(machine.vcpus.count), inKernelIRQChip: machine.vm.irqChipCreated,
            hasNIC: machine.net != nil, kernelSHA256: kernelSHA256, name: name))
        var fileOptions = options
        fileOptions.streams = 1
        fileOptions.adaptiveCompression = false // a file is no fast link: compress every batch
        let stream = SnapshotFileStream(writer)
        let channel = FrameChannel(stream)
        let sink: any PageRoundSink
        let mapped: MappedPageSink?
        if layout == .mapped {
            try writer.setSize(UInt64(SnapshotHeader.size) + memory.size) // sparse: slots without data stay holes
            mapped = MappedPageSink(writer: writer, memory: memory, cancelled: { [self] in isCancelled })
            sink = mapped!
        } else {
            mapped = nil
            sink = RoundSender(channels: [channel], machine: machine, options: fileOptions,
                               cancelled: Locked(false), cpu: cpu)
        }
        let wasRunning = machine.vcpus.contains { $0.state == .running }
        var tracker: DirtyTracker?
        var paused = false
        var stats = MigrationStats()
        do throws(MigrationError) {
            stats.memoryBytes = memory.size
            stats.streams = 1
            stats.dirtySource = options.dirtySource
            if live { stats.downtimeTargetSeconds = options.downtimeTarget }
            var pending = PageBitmap(pageCount: memory.pageCount)
            if live && wasRunning {
                do { tracker = try DirtyTracker(machine: machine, mode: options.dirtySource) } catch { throw .dirtyTracking(error) }
                pending = try precopy(tracker: tracker!, rounds: sink, stats: &stats, started: started, roundTrip: 0,
                                      progress: progress)
                releaseThrottle()
            }
            let pausedAt = ContinuousClock.now
            machine.pause()
            paused = true
            var ballooned = machine.pv.balloonedPages
            var finalSet: PageBitmap
            var skipZero = false
            if let tracker {
                let final: DirtyRound
                do { final = try tracker.harvest(vcpusPaused: true, last: true) } catch { throw .dirtyTracking(error) }
                ballooned.formUnion(final.ballooned)
                finalSet = pending.union(final.pages)
            } else {
                finalSet = memory.residentPages() // pause-and-save: every page that can hold data
                skipZero = true
            }
            finalSet.subtract(ballooned)
            let last = try sink.send(pages: finalSet, round: UInt32(stats.rounds.count), skipZero: skipZero)
            try mapped?.discard(ballooned)
            if layout == .compressed {
                do { try channel.send(.streamEnd(frames: channel.framesSent)) } catch { throw .transport(error) }
            }
            let digest = sink.sentHashes.digest(excluding: ballooned)
            let saved: MachineState
            do { saved = try machine.saveState() } catch { throw .machine(error) }
            do { try tracker?.confirmVIFPages(saved.registeredVIFPages) } catch { throw .dirtyTracking(error) }
            let state = saved.encoded()
            tracker?.stop()
            // The guest may run again: what follows only writes what was captured.
            stats.downtimeSeconds = (ContinuousClock.now - pausedAt).seconds
            if wasRunning && !stopAfter { machine.resume(); paused = false }
            var index = PageBitmap(pageCount: memory.pageCount)
            if let mapped { index = mapped.written } else {
                for i in 0..<memory.pageCount where sink.sentHashes.hash(at: i) != 0 && !ballooned.contains(i) { index.insert(i) }
            }
            guard UInt64(index.count) == digest.pagesWithData else {
                throw .incompatible("internal: the index marks \(index.count) pages, the digest counted \(digest.pagesWithData)")
            }
            let indexBytes = SnapshotHeader.encodeIndex(index)
            header.place(memoryLength: layout == .mapped ? memory.size : stream.offset - UInt64(SnapshotHeader.size),
                         stateLength: UInt64(state.count))
            header.memoryDigest = digest.digest
            header.pagesWithData = digest.pagesWithData
            header.stateDigest = StateDigest.compute(state)
            header.indexDigest = StateDigest.compute(indexBytes)
            header.frames = layout == .compressed ? channel.framesSent : 0
            header.rounds = UInt32(stats.rounds.count + 1)
            header.savedAt = UInt64(Date().timeIntervalSince1970)
            do {
                try writer.write(state, at: header.stateOffset)
                try writer.write(indexBytes, at: header.indexOffset)
                try writer.setSize(header.fileSize)
                try writer.write(header.encoded(), at: 0)
            } catch let e as TransportError { throw MigrationError.transport(e) } catch {
                throw MigrationError.incompatible("\(error)")
            }
            stats.addFinal(last, digest: digest)
            stats.wireBytes = header.fileSize
            stats.cpuSeconds = cpu.seconds + CPUMeter.threadSeconds() - threadCPUAtStart
        } catch {
            releaseThrottle()
            tracker?.stop()
            if paused && wasRunning { machine.resume() }
            throw .save(error.description)
        }
        do { try writer.commit() } catch {
            if paused && wasRunning { machine.resume() } // --stop: the VM stays, as there is no file
            throw error
        }
        stats.totalSeconds = (ContinuousClock.now - started).seconds
        if stopAfter { machine.stop() }
        return SnapshotSaved(path: writer.path, layout: layout.description, fileBytes: header.fileSize,
                             allocatedBytes: allocated(writer.path), stats: stats)
    }

    private func allocated(_ path: String) -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0 else { return 0 }
        return UInt64(st.st_blocks) * 512
    }
}
