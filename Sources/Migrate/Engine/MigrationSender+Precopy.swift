import Core
import Foundation

extension MigrationSender {
    /// Pre-copy rounds until the remaining set fits the downtime target and no longer shrinks
    /// (`FloorPolicy`). Returns the pages
    /// still dirty, which the stop-and-copy round must send together with whatever the
    /// paused harvest adds.
    /// Stop-and-copy starts when the `DowntimePredictor`'s pause for the remaining set fits the
    /// target; the prediction is kept in `stats` to be set against the actual pause.
    func precopy(tracker: DirtyTracker, rounds: some PageRoundSink, stats: inout MigrationStats, started: ContinuousClock.Instant,
                 roundTrip: Double, probeRoundTrip: ((UInt64) throws(MigrationError) -> PingSample)? = nil,
                 balloonUpdate: (() throws(MigrationError) -> Void)? = nil,
                 progress: @Sendable (RoundStats) -> Void) throws(MigrationError) -> PageBitmap {
        do { try tracker.start() } catch { throw .dirtyTracking(error) }
        var lastHarvest = ContinuousClock.now // the start of the interval the next harvest covers
        let memory = machine.memory
        // Round 0: every page that can hold data — resident on this host, not ballooned.
        var set = memory.residentPages().subtracting(machine.pv.balloonedPages)
        var bandwidth = 0.0, bytesPerPage = 4096.0, throttleLevel = 0, throttle: UInt32 = 0
        var round: UInt32 = 0
        var verified = false
        var floor = FloorPolicy()
        var predictor = DowntimePredictor()
        var roundTrips = RoundTripEstimate(roundTrip)
        var stops: [Double] = [] // the recent vCPU stops (`stopSample`)
        var stopCount = 0 // every one of them, for `FloorPolicy`
        var stateSaves: [Double] = [] // the recent state saves timed in those stops
        var balloonUpdates: [Double] = [] // the recent BALLOON updates (BALLOON_MAP)
        predictor.roundTrip = roundTrips.seconds
        stats.downtimeTargetSeconds = options.downtimeTarget
        while true {
            if isCancelled { throw .cancelled }
            let elapsed = (ContinuousClock.now - started).seconds
            guard elapsed < options.maxTime else {
                throw .notConverging(Self.notConvergingReason(stats: stats, predictor: predictor, elapsed: elapsed,
                                                              target: options.downtimeTarget))
            }
            var r = try rounds.send(pages: set, round: round, skipZero: round == 0)
            // The balloon map's changes go now, not in the pause (BALLOON_MAP, §3.2.1); timed
            // for the pause's own update (`DowntimePredictor.balloonUpdate`).
            if let balloonUpdate {
                let updateStarted = ContinuousClock.now
                try balloonUpdate()
                balloonUpdates = Array((balloonUpdates + [(ContinuousClock.now - updateStarted).seconds]).suffix(5))
                predictor.setBalloonUpdates(balloonUpdates)
            }
            let quiet = r.wireBytes <= RoundTripEstimate.quietRoundBytes
            if quiet {
                // A rehearsal of the pause's fixed part, in the conditions of the pause (small
                // rounds only: the guest loses the moment it takes, and after a big round the
                // PONG would wait for the destination to read the round's pages). Stopping the vCPUs: the
                // fastest of the last 5 stops (`DowntimePredictor.stopVCPUs`) — scheduler latency,
                // and one sample was 0.1 ms to 1.9 s on a loaded host (it kept 3 of 12 bench runs
                // from converging, docs/benchmarks.md "Predicted vs actual, phase by phase").
                // The state save, timed in the same stop: the median of the last 5. The commit's
                // round trip (`RoundTripEstimate`): a PING while the vCPUs are parked, as COMMIT
                // and GO are sent — with the guest running it held a core, and the round trips
                // measured then were 2–3× the commit's on a quiet host (docs/benchmarks.md
                // "The pause rehearsed in its own conditions").
                let sample = try stopSample(withBalloonMap: balloonUpdate == nil, probe: probeRoundTrip, nonce: UInt64(round))
                stops = Array((stops + [sample.stop]).suffix(5))
                stopCount += 1
                predictor.setStopLatencies([stops.min()!])
                if let save = sample.stateSave { stateSaves = Array((stateSaves + [save]).suffix(5)) }
                predictor.setStateSaves(stateSaves)
                if let bytes = sample.stateBytes { predictor.stateBytes = bytes }
                if let ping = sample.ping {
                    roundTrips.record(ping.roundTrip)
                    predictor.roundTrip = roundTrips.seconds
                    // The destination's own commit work (PONG_WORK, its median of recent rehearsals).
                    if let prepare = ping.destinationPrepare, let start = ping.destinationStart {
                        predictor.destinationPrepare = prepare
                        predictor.destinationStart = start
                    }
                }
            }
            // The harvest is the last step before the decision: what the guest writes after it
            // reaches the final set only through the paused harvest, and is estimated
            // (`DowntimePredictor.finalPages`), so the time after it is kept short.
            let harvested: DirtyRound
            let harvestStarted = ContinuousClock.now
            do { harvested = try tracker.harvest(vcpusPaused: false) } catch { throw .dirtyTracking(error) }
            let next = harvested.pages
            let harvestEnded = ContinuousClock.now
            r.harvestSeconds = (harvestEnded - harvestStarted).seconds
            r.harvestKVMSeconds = harvested.kvmSeconds
            r.harvestKVMRearmSeconds = harvested.kvmRearmSeconds
            r.harvestPVSeconds = harvested.sourceSeconds[.pvRing] ?? 0
            predictor.recordHarvest(r)
            let dirty = next.count // one pass over the bitmap, not one per use (it grows with the guest)
            predictor.recordInterval(pages: dirty, seconds: (harvestEnded - lastHarvest).seconds)
            lastHarvest = harvestEnded
            predictor.record(r)
            r.bandwidth = r.seconds > 0 ? Double(r.wireBytes) / r.seconds : 0
            if r.wireBytes >= 256 << 10 { bandwidth = max(bandwidth * 0.5, r.bandwidth) } // a round that says something
            if bandwidth == 0 { bandwidth = max(r.bandwidth, 100e6) }
            if let cap = options.bandwidthLimit { bandwidth = min(bandwidth, cap) }
            if r.pages > 0 { bytesPerPage = max(16, Double(r.wireBytes) / Double(r.pages)) }
            predictor.sendRate = bandwidth
            r.dirtyPages = dirty
            r.dirtyRate = r.seconds > 0 ? Double(dirty) / r.seconds : 0
            let finalPages = predictor.finalPages(dirty: dirty, sinceHarvest: (ContinuousClock.now - harvestEnded).seconds,
                                                  pageCount: memory.pageCount)
            let prediction = predictor.predict(pages: finalPages)
            r.expectedDowntime = prediction.seconds
            r.throttle = throttle
            stats.add(r)
            progress(r)
            if dirty == 0 || prediction.seconds <= options.downtimeTarget, !verified {
                // Converged once: verify (§3.5.2) before the final round(s); what it finds,
                // and what the guest dirtied meanwhile, goes in the next round.
                round += 1
                set = try verify(tracker: tracker, pending: next, rounds: rounds, round: &round, stats: &stats)
                lastHarvest = ContinuousClock.now // the sweep's last harvest ended just now
                verified = true
                continue
            }
            if dirty == 0 || prediction.seconds <= options.downtimeTarget {
                // It fits: go on to the floor while rounds still shrink the set (`FloorPolicy`).
                if floor.decide(sent: set.count, dirty: dirty, roundSeconds: r.seconds,
                                elapsed: (ContinuousClock.now - started).seconds, maxTime: options.maxTime,
                                fixedPartSamples: stopCount) == .anotherRound {
                    set = next
                    round += 1
                    continue
                }
                stats.predictedDowntimeSeconds = prediction.seconds
                stats.predictedFixedSeconds = prediction.fixedSeconds
                stats.predictedFinalPages = finalPages
                stats.predictedPausePhases = prediction.phases
                return next
            }
            // Auto-converge: the guest dirties faster than the link or the sender drains.
            // The sender's own rate, from a round big enough that its fixed cost does not dominate.
            let sentRate = r.pages >= 256 && r.seconds > 0 ? Double(r.pages) / r.seconds : 0
            if options.autoConverge, round >= 1,
               AutoConverge.losing(dirtyRate: r.dirtyRate, sentRate: sentRate, bytesPerPage: bytesPerPage, bandwidth: bandwidth) {
                throttleLevel += 1
                stats.throttled = true
                throttle = applyThrottle(level: throttleLevel, dirtyRate: r.dirtyRate,
                                         linkPages: AutoConverge.drainRate(sentRate: sentRate, bytesPerPage: bytesPerPage,
                                                                           bandwidth: bandwidth))
            }
            set = next
            round += 1
        }
    }

    /// The verification sweep (protocol.md §3.5.2), run once pre-copy has converged, the guest
    /// still running. KVM's log goes on first (`pv-verified`); every page is compared with the
    /// hash of what was sent. The sweep goes in slices of about a second: after each, a
    /// harvest says which mismatches were reported, and what is to be sent goes out as a
    /// round (the streams never fall silent for longer than a slice: the destination's read
    /// timeout). Missed pages (mismatches no source reported) are counted and re-sent. In
    /// `pv` mode, where KVM's log was off, they also switch KVM's log on and the sweep runs
    /// again, so that the final set is exact. Returns the pages still to send.
    func verify(tracker: DirtyTracker, pending: PageBitmap, rounds: some PageRoundSink, round: inout UInt32,
                stats: inout MigrationStats) throws(MigrationError) -> PageBitmap {
        let started = ContinuousClock.now
        let memory = machine.memory, sliceSeconds = 1.0, slicePages = 4096
        var toSend = pending
        if tracker.mode == .pvVerified {
            do { try tracker.addKVM() } catch { throw .dirtyTracking(error) }
        }
        while true {
            let kvmThroughout = tracker.usesKVM
            let resident = memory.residentPages()
            var reported = toSend, missed = 0, cursor = 0
            stats.verification.sweeps += 1
            while cursor < memory.pageCount {
                if isCancelled { throw .cancelled }
                let sliceStarted = ContinuousClock.now
                var mismatches = PageBitmap(pageCount: memory.pageCount)
                let skipping = toSend.union(machine.pv.balloonedPages)
                repeat {
                    let end = min(memory.pageCount, cursor + slicePages)
                    let found = VerificationSweep.mismatches(memory: memory, sent: rounds.sentHashes, skipping: skipping,
                                                             range: cursor..<end, resident: resident)
                    mismatches.formUnion(found.pages)
                    stats.verification.pagesHashed += found.hashed
                    cursor = end
                } while cursor < memory.pageCount && (ContinuousClock.now - sliceStarted).seconds < sliceSeconds
            let harvest: DirtyRound
            do { harvest = try tracker.harvest(vcpusPaused: false) } catch { throw .dirtyTracking(error) }
                let finding = VerificationSweep.classify(mismatches: mismatches, pending: reported, harvested: harvest.pages,
                                                     ballooned: harvest.ballooned)
                reported.formUnion(harvest.pages)
            stats.verification.mismatches += mismatches.count
                missed += finding.missed.count
                toSend = toSend.union(harvest.pages).union(mismatches).subtracting(harvest.ballooned)
                if cursor < memory.pageCount {
                    var r = try rounds.send(pages: toSend, round: round, skipZero: false)
                    r.dirtyPages = 0
                    stats.add(r)
                    round += 1
                    toSend = PageBitmap(pageCount: memory.pageCount)
                }
            }
            stats.verification.underReportedPages += missed
            if missed == 0 || kvmThroughout { break }
            do { try tracker.addKVM() } catch { throw .dirtyTracking(error) }
        }
        stats.verification.seconds += (ContinuousClock.now - started).seconds
        return toSend
    }

    /// Why pre-copy gave up, with the figures that decide it: what the pause would have been,
    /// which part of it does not shrink with the dirty set, and how fast the guest dirtied.
    static func notConvergingReason(stats: MigrationStats, predictor: DowntimePredictor, elapsed: Double,
                                    target: Double) -> String {
        guard let last = stats.rounds.last else { return "no round finished within --max-time" }
        let p = predictor.predict(pages: last.dirtyPages)
        let perPage = predictor.fit.secondsPerPage
        func ms(_ s: Double) -> String { String(format: "%.1f ms", s * 1000) }
        var why = "after \(Int(elapsed)) s (--max-time) \(last.dirtyPages) pages were still dirty; the pause would have been "
            + "\(ms(p.seconds)) (\(ms(p.pagesSeconds)) for the pages, \(ms(p.fixedSeconds)) fixed: stopping the vCPUs, harvest, "
            + "state, commit round trips), "
        if p.seconds <= target {
            // It fitted, but the rounds before (round 0, the verification sweep) outlasted --max-time.
            return why + "within the \(ms(target)) target, but the rounds before it took longer than --max-time: raise --max-time."
        }
        why += "above the \(ms(target)) target. "
        if p.fixedSeconds >= target {
            why += "The fixed part alone exceeds the target: raise --downtime-ms."
        } else {
            why += String(format: "The guest dirtied %.0f pages/s; this link moves about %.0f pages/s",
                          last.dirtyRate, perPage > 0 ? 1 / perPage : 0)
            why += stats.throttled ? " even with the guest throttled (auto-converge)" : ""
            why += ". Raise --downtime-ms or --max-time, or lower the guest's write load."
        }
        return why
    }

    /// PV guests are asked to slow down (halving per level); others have their vCPUs paused
    /// for a growing share of the time. Returns the figure for the statistics.
    private func applyThrottle(level: Int, dirtyRate: Double, linkPages: Double) -> UInt32 {
        if machine.pv.isRegistered {
            let target = max(64, min(dirtyRate, linkPages) / Double(1 << min(level, 16)))
            let pagesPerSecond = UInt32(min(target, Double(UInt32.max)))
            machine.pv.setThrottle(pagesPerSecond: pagesPerSecond)
            return pagesPerSecond
        }
        let fraction = min(0.9, 0.2 * Double(level))
        machine.setCPUThrottle(fraction)
        return UInt32(fraction * 1000)
    }
}
