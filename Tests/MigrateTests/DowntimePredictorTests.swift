import Testing

@testable import Migrate

/// A model of a link and of the final round: a round of `pages` pages takes
/// `overhead + pages × perPage` seconds, scaled by a deterministic noise factor.
private struct LinkModel {
    var overhead = 0.0004
    var perPage = 12e-6
    func seconds(_ pages: Int, noise: Double = 1) -> Double { (overhead + Double(pages) * perPage) * noise }
}

@Suite("downtime predictor")
struct DowntimePredictorTests {
    /// Pre-copy rounds of a converging guest on the modelled link, with ±8 % noise.
    private func predictor(_ link: LinkModel, rounds: [Int] = [65_000, 9_000, 2_400, 1_100, 700]) -> DowntimePredictor {
        var p = DowntimePredictor()
        let noise = [1.08, 0.93, 1.05, 0.96, 1.02, 0.97]
        for (i, pages) in rounds.enumerated() { p.record(pages: pages, seconds: link.seconds(pages, noise: noise[i % noise.count])) }
        p.roundTrip = 0.0003
        p.harvest = 0.0002
        p.stateSave = 0.001
        return p
    }

    @Test("predicts the modelled final round and the fixed cost within 10 %")
    func matchesTheModelOfTheFinalRound() {
        let link = LinkModel()
        let p = predictor(link)
        for finalPages in [0, 120, 500, 2_000, 3_500] {
            // The pause: the final round, the harvest, the state, two commit round trips.
            let actual = link.seconds(finalPages) + 0.0002 + 0.001 + 2 * 0.0003
            let predicted = p.predict(pages: finalPages).seconds
            #expect(abs(predicted - actual) / actual < 0.10,
                    "final round of \(finalPages) pages: predicted \(predicted * 1000) ms, model \(actual * 1000) ms")
        }
        let fit = p.fit
        #expect(abs(fit.secondsPerPage - link.perPage) / link.perPage < 0.10, "per page \(fit.secondsPerPage)")
    }

    @Test("the fixed part is harvest + state + two commit round trips, whatever the page count")
    func fixedPart() {
        let p = predictor(LinkModel())
        #expect(p.predict(pages: 0).fixedSeconds == p.predict(pages: 10_000).fixedSeconds)
        #expect(abs(p.predict(pages: 0).fixedSeconds - (0.0002 + 0.001 + 2 * 0.0003)) < 1e-12,
                "fixed part \(p.predict(pages: 0).fixedSeconds)")
        #expect(p.predict(pages: 10_000).pagesSeconds > p.predict(pages: 100).pagesSeconds)
    }

    @Test("a slower link predicts a longer pause for the same pages, so stop-and-copy waits for fewer pages")
    func slowerLinkWaitsLonger() {
        let fast = predictor(LinkModel(perPage: 10e-6)), slow = predictor(LinkModel(perPage: 80e-6))
        let target = 0.050
        func largestFitting(_ p: DowntimePredictor) -> Int {
            (0...20_000).last { p.predict(pages: $0).seconds <= target } ?? -1
        }
        let fastPages = largestFitting(fast), slowPages = largestFitting(slow)
        #expect(fastPages > 4_000 && fastPages < 5_500, "fast link: \(fastPages) pages fit 50 ms")
        #expect(slowPages > 500 && slowPages < 700, "slow link: \(slowPages) pages fit 50 ms")
    }

    @Test("before any page was sent, a conservative default cost per page")
    func noPagesYet() {
        var p = DowntimePredictor()
        #expect(p.fit.secondsPerPage == DowntimePredictor.defaultSecondsPerPage)
        p.record(pages: 0, seconds: 0.002)
        #expect(p.fit.roundOverhead == 0.002)
        #expect(abs(p.predict(pages: 1000).pagesSeconds - (0.002 + 1000 * DowntimePredictor.defaultSecondsPerPage)) < 1e-12)
    }

    @Test("noise that would give a negative slope or overhead falls back to a line that still covers the rounds")
    func noisyRoundsStayConservative() {
        var p = DowntimePredictor()
        // The big round went faster than the small one (the host got quieter): the floor of
        // the rounds plus the average cost per page.
        p.record(pages: 10_000, seconds: 0.03)
        p.record(pages: 1_000, seconds: 0.04)
        #expect(p.fit.roundOverhead == 0.03)
        #expect(abs(p.fit.secondsPerPage - 0.07 / 11_000) < 1e-12)
        #expect(p.predict(pages: 1_000).pagesSeconds > 0.03)
        // Small rounds cheap per page, a big one dear: the overhead would be negative, so the
        // line goes through the origin.
        var q = DowntimePredictor()
        q.record(pages: 1_000, seconds: 0.001)
        q.record(pages: 10_000, seconds: 0.05)
        #expect(q.fit.roundOverhead == 0 && q.fit.secondsPerPage > 1e-6 && q.fit.secondsPerPage < 5e-6, "\(q.fit)")
        // Rejected measurements are ignored.
        q.record(pages: -1, seconds: 1)
        q.record(pages: 5, seconds: .nan)
        #expect(q.samples.count == 2)
    }

    @Test("only recent rounds count: a link that got faster is seen within the window")
    func forgetsOldRounds() {
        var p = predictor(LinkModel(perPage: 200e-6))
        let fast = LinkModel(perPage: 10e-6)
        for pages in [3_000, 1_500, 800, 3_000, 1_000, 600] { p.record(pages: pages, seconds: fast.seconds(pages)) }
        #expect(p.samples.count == DowntimePredictor.window)
        #expect(abs(p.fit.secondsPerPage - fast.perPage) / fast.perPage < 0.01)
    }

    @Test("a migration that cannot converge says which part of the pause does not fit")
    func notConvergingReason() {
        var stats = MigrationStats()
        var r = RoundStats(round: 7)
        r.dirtyPages = 20_000
        r.dirtyRate = 50_000
        stats.rounds = [r]
        stats.throttled = true
        let p = predictor(LinkModel())
        let why = MigrationSender.notConvergingReason(stats: stats, predictor: p, elapsed: 300, target: 0.05)
        #expect(why.contains("20000 pages were still dirty") && why.contains("50000 pages/s"), "\(why)")
        #expect(why.contains("auto-converge") && why.contains("--downtime-ms or --max-time"), "\(why)")
        var slowCommit = p
        slowCommit.roundTrip = 0.2
        let fixed = MigrationSender.notConvergingReason(stats: stats, predictor: slowCommit, elapsed: 300, target: 0.05)
        #expect(fixed.contains("fixed part alone exceeds the target"), "\(fixed)")
        // The pause would have fitted: the rounds before it (round 0, the sweep) ran out of time.
        stats.rounds[0].dirtyPages = 100
        let fitted = MigrationSender.notConvergingReason(stats: stats, predictor: p, elapsed: 300, target: 0.05)
        #expect(fitted.contains("within the 50.0 ms target") && fitted.contains("raise --max-time") && !fitted.contains("above"),
                "\(fitted)")
    }

    @Test("the harvest estimate is the median of recent harvests: one slow harvest does not move it")
    func harvestIsTheMedian() {
        var p = DowntimePredictor()
        for seconds in [0.0011, 0.0009, 0.0115, 0.0010, 0.0012] { p.recordHarvest(seconds: seconds) }
        #expect(abs(p.harvest - 0.0011) < 1e-12, "harvest estimate \(p.harvest) after one 11.5 ms outlier")
        p.recordHarvest(seconds: .nan)
        p.recordHarvest(seconds: -1)
        #expect(p.harvests.count == 5, "invalid durations are not recorded: \(p.harvests)")
        for _ in 0..<DowntimePredictor.window { p.recordHarvest(seconds: 0.004) }
        #expect(p.harvests.count == DowntimePredictor.window)
        #expect(p.harvest == 0.004, "a harvest that really got slower moves the estimate: \(p.harvest)")
        var even = DowntimePredictor()
        even.recordHarvest(seconds: 0.001); even.recordHarvest(seconds: 0.003)
        #expect(abs(even.harvest - 0.002) < 1e-12)
    }

    // MARK: The paused round, the paused harvest, stopping the vCPUs (a model of the final round)

    /// A 2-core host with no idle core: a guest taking `guestCores` of it, the migration's
    /// threads sharing the rest. Paused, the guest's share goes to them: a page costs
    /// `perPage` then, and `perPage / (1 − guestCores / 2)` while the guest runs.
    private struct ContendedHost {
        var cores = 2, guestCores = 0.5, overhead = 0.0004, perPage = 8e-6
        var precopyPerPage: Double { perPage / (1 - guestCores / Double(cores)) }
        func precopy(_ pages: Int) -> DowntimePredictor.Sample {
            let seconds = overhead + Double(pages) * precopyPerPage
            return .init(pages: pages, seconds: seconds, guestCPU: guestCores * seconds, hostIdle: 0)
        }
        func paused(_ pages: Int) -> Double { overhead + Double(pages) * perPage }
    }

    @Test("a host with no idle core: the paused round gets the guest's share, and is predicted so within 10 %")
    func pausedRoundGetsTheGuestsShare() {
        for host in [ContendedHost(), ContendedHost(guestCores: 0.2), ContendedHost(guestCores: 0.9)] {
            var p = DowntimePredictor()
            p.cores = host.cores
            for pages in [40_000, 6_000, 2_500, 1_200, 900] {
                let s = host.precopy(pages)
                p.record(pages: s.pages, seconds: s.seconds, guestCPU: s.guestCPU, hostIdle: s.hostIdle)
            }
            #expect(abs(p.pausedPageFactor - (1 - host.guestCores / 2)) < 1e-9, "factor \(p.pausedPageFactor)")
            for finalPages in [300, 1_000, 3_000] {
                let predicted = p.predict(pages: finalPages).pagesSeconds, actual = host.paused(finalPages)
                #expect(abs(predicted - actual) / actual < 0.10,
                        "guest \(host.guestCores) cores, \(finalPages) pages: predicted \(predicted * 1000) ms, model \(actual * 1000) ms")
                // Without the guest's CPU time the old rule holds: the pre-copy cost per page.
                var blind = DowntimePredictor()
                for pages in [40_000, 6_000, 2_500, 1_200, 900] { blind.record(pages: pages, seconds: host.precopy(pages).seconds) }
                #expect(blind.pausedPageFactor == 1 && blind.predict(pages: finalPages).pagesSeconds > actual)
            }
        }
    }

    @Test("idle cores during the rounds: the guest did not hold them back, no discount; never below the floor")
    func idleCoresOrAGreedyGuest() {
        var p = DowntimePredictor()
        p.cores = 2
        // The rounds waited on the link: half of the host idle.
        p.record(pages: 5_000, seconds: 0.1, guestCPU: 0.1, hostIdle: 0.1)
        #expect(p.pausedPageFactor == 1)
        var q = DowntimePredictor()
        q.cores = 2
        // A guest that (by the clock's granularity) took more than the whole host.
        q.record(pages: 5_000, seconds: 0.1, guestCPU: 0.25, hostIdle: 0)
        #expect(q.pausedPageFactor == DowntimePredictor.minimumPausedPageFactor)
        // Invalid figures count as unknown.
        var r = DowntimePredictor()
        r.record(pages: 5_000, seconds: 0.1, guestCPU: .nan, hostIdle: -1)
        #expect(r.samples.first?.guestCPU == nil && r.samples.first?.hostIdle == nil && r.pausedPageFactor == 1)
    }

    @Test("the paused harvest: KVM's log and the bitmap work as measured, the PV ring without its barrier")
    func pausedHarvestFromItsSources() {
        // Model: KVM's log over the slots 0.8 ms, merging bitmaps 0.3 ms, the PV drain 0.1 ms;
        // with the guest running HARVEST_BARRIER adds 2–9 ms to the PV part. The paused
        // harvest (no barrier) takes 0.8 + 0.3 + 0.1 = 1.2 ms.
        var p = DowntimePredictor()
        // Before the sweep KVM's log is off: harvests of the PV ring and bitmap work only.
        for barrier in [0.004, 0.009] { p.recordHarvest(seconds: 0.0003 + 0.0001 + barrier, pv: 0.0001 + barrier) }
        for (i, barrier) in [0.002, 0.006, 0.003, 0.0].enumerated() {
            let kvm = 0.0008 + (i == 1 ? 0.004 : 0) // one ioctl preempted: the median ignores it
            p.recordHarvest(seconds: kvm + 0.0003 + 0.0001 + barrier, kvm: kvm, pv: 0.0001 + barrier)
        }
        #expect(abs(p.harvest - 0.0012) < 1e-9, "paused harvest \(p.harvest * 1000) ms, model 1.2 ms")
        #expect(p.harvests.count == DowntimePredictor.window)
        #expect(p.predict(pages: 0).phases.harvest == p.harvest)
        // A harvest recorded from RoundStats carries its parts.
        var r = RoundStats(round: 3)
        r.harvestSeconds = 0.002; r.harvestKVMSeconds = 0.0015; r.harvestPVSeconds = 0.0002
        var q = DowntimePredictor()
        q.recordHarvest(r)
        #expect(q.harvestSamples == [.init(total: 0.002, kvm: 0.0015, pv: 0.0002)])
        #expect(abs(q.harvest - 0.002) < 1e-12)
    }

    @Test("stopping the vCPUs: the median of the measured pauses, a phase of the prediction that sums to the pause")
    func stopAndPhases() {
        var p = predictor(LinkModel())
        p.setStopLatencies([0.0002, 0.03, 0.0004])
        #expect(p.stopVCPUs == 0.0004)
        p.setStopLatencies([])
        #expect(p.stopVCPUs == 0.0004, "no measurement leaves the estimate alone")
        let prediction = p.predict(pages: 1_500)
        let phases = prediction.phases
        #expect(phases.stopVCPUs == 0.0004 && phases.harvest == 0.0002 && phases.stateSave == 0.001)
        #expect(phases.commitToPrepared == 0.0003 && phases.goToDone == 0.0003 && phases.finalRound == prediction.pagesSeconds)
        #expect(abs(phases.total - prediction.seconds) < 1e-12 && abs(prediction.fixedSeconds - (0.0004 + 0.0002 + 0.001 + 0.0006)) < 1e-12)
    }

    @Test("the state save is the median of the measured ones, 1 ms before any: it is a phase of the pause")
    func stateSaveComesFromTheMeasuredSaves() {
        var p = predictor(LinkModel())
        #expect(p.predict(pages: 100).phases.stateSave == DowntimePredictor.defaultStateSave)
        let before = p.predict(pages: 100).seconds
        // A 9 GiB guest's balloon map makes the save dearer; one preempted sample must not decide.
        p.setStateSaves([0.0016, 0.0150, 0.0014])
        #expect(p.stateSave == 0.0016)
        p.setStateSaves([.nan, -1])
        #expect(p.stateSave == 0.0016, "no valid measurement leaves the estimate alone")
        let after = p.predict(pages: 100)
        #expect(after.phases.stateSave == 0.0016 && abs(after.seconds - before - 0.0006) < 1e-12, "\(after)")
    }

    @Test("re-arming KVM's log is left out of the harvest samples: the paused harvest skips it")
    func harvestWithoutReArming() {
        var p = DowntimePredictor()
        var r = RoundStats(round: 2)
        r.harvestSeconds = 0.0008; r.harvestKVMSeconds = 0.0005; r.harvestKVMRearmSeconds = 0.0002
        p.recordHarvest(r)
        // KVM 0.3 ms without the clear, bitmap work 0.3 ms: 0.6 ms, not 0.8.
        #expect(abs(p.harvest - 0.0006) < 1e-12 && abs(p.harvestSamples[0].kvm - 0.0003) < 1e-12, "\(p.harvestSamples)")
    }

    @Test("STATE's send is its bytes at the rounds' rate, and the pause's BALLOON update the median of the measured ones")
    func stateSendAndBalloonUpdateArePredicted() {
        var p = predictor(LinkModel())
        let before = p.predict(pages: 100)
        #expect(before.phases.stateSend == 0 && before.phases.balloonUpdate == 0, "nothing known: nothing predicted")
        // A 9 GiB guest's state with its balloon map in it (~300 KiB) at 300 MB/s: 1 ms.
        p.stateBytes = 300_000
        p.sendRate = 300e6
        p.setBalloonUpdates([0.00003, 0.002, 0.00004])
        let after = p.predict(pages: 100)
        #expect(abs(after.phases.stateSend - 0.001) < 1e-12 && after.phases.balloonUpdate == 0.00004, "\(after.phases)")
        #expect(abs(after.fixedSeconds - before.fixedSeconds - 0.00104) < 1e-12 && after.pagesSeconds == before.pagesSeconds)
        #expect(abs(after.phases.total - after.seconds) < 1e-12, "the phases add up to the prediction")
    }

    @Test("the commit is the two round trips plus the destination's reported work, and the stop is predicted: a model of the pause")
    func commitCarriesTheDestinationsWork() {
        // A model of a quiet host: PING round trip 0.2 ms, the destination's own work 1.5 ms
        // before PREPARED and 2.5 ms before DONE, stopping the vCPUs 0.3 ms (issue 11: the
        // misses of 1–4 ms on pauses of 2–10 ms).
        let link = LinkModel(), roundTrip = 0.0002, prepare = 0.0015, start = 0.0025, stop = 0.0003
        var p = predictor(link)
        p.roundTrip = roundTrip
        let without = p.predict(pages: 200)
        p.destinationPrepare = prepare
        p.destinationStart = start
        p.setStopLatencies([stop, 0.02, stop * 0.9])
        let with = p.predict(pages: 200)
        let actual = stop + 0.0002 + link.seconds(200) + 0.001 + (roundTrip + prepare) + (roundTrip + start)
        #expect(abs(with.seconds - actual) / actual < 0.10, "predicted \(with.seconds * 1000) ms, model \(actual * 1000) ms")
        #expect(abs(without.seconds - actual) / actual > 0.30, "without the report the model's pause is missed by over 30 %")
        #expect(abs(with.phases.commitToPrepared - (roundTrip + prepare)) < 1e-12 && abs(with.phases.goToDone - (roundTrip + start)) < 1e-12)
        #expect(with.phases.stopVCPUs == stop, "the median of the stops, not the 20 ms outlier")
        #expect(abs(with.phases.total - with.seconds) < 1e-12)
    }

    @Test("the final round is anchored on the cheapest recent small round: preempted small rounds do not raise it")
    func finalRoundAnchoredOnSmallRounds() {
        // A model of a paused round: 0.3 ms a round + 6 µs a page. The pre-copy rounds cost that
        // plus whatever the running guest and the host took from them: nothing for the big
        // rounds here, 0.5 and 0.2 ms for two of the three small ones (preempted).
        let perPage = 6e-6
        func paused(_ pages: Int) -> Double { 0.0003 + Double(pages) * perPage }
        var p = DowntimePredictor()
        for pages in [65_000, 9_000, 2_400] { p.record(pages: pages, seconds: 0.0001 + Double(pages) * perPage) }
        for (pages, lost) in [(150, 0.0005), (60, 0.0002), (40, 0.0)] { p.record(pages: pages, seconds: paused(pages) + lost) }
        for finalPages in [35, 120] {
            let predicted = p.predict(pages: finalPages).phases.finalRound
            #expect(abs(predicted - paused(finalPages)) / paused(finalPages) < 0.10,
                    "\(finalPages) pages: predicted \(predicted * 1000) ms, model \(paused(finalPages) * 1000) ms")
        }
        // The line alone, pulled up by the preempted rounds, misses the model by over twice as much.
        let line = p.fit.roundOverhead + 35 * p.fit.secondsPerPage
        #expect(abs(line - paused(35)) > 2 * abs(p.predict(pages: 35).phases.finalRound - paused(35)), "line \(line * 1000) ms")
        // Many pages: the anchor moves up along the line's cost per page.
        let big = p.predict(pages: 20_000).phases.finalRound
        #expect(abs(big - paused(20_000)) / paused(20_000) < 0.10, "20,000 pages: \(big * 1000) ms")
        // Fewer pages than the anchor round: that round as it is, not moved down (it would
        // cross zero: 250 pages in 0.3 ms, at 6 µs a page, for 10 pages).
        var r = DowntimePredictor()
        for pages in [65_000, 9_000, 2_400] { r.record(pages: pages, seconds: 0.0001 + Double(pages) * perPage) }
        r.record(pages: 250, seconds: 0.0003)
        #expect(r.predict(pages: 10).phases.finalRound == 0.0003)
        // No small round in the window: the line decides.
        var q = DowntimePredictor()
        for pages in [65_000, 9_000, 2_400, 1_100, 700] { q.record(pages: pages, seconds: 0.0001 + Double(pages) * perPage) }
        #expect(abs(q.predict(pages: 35).phases.finalRound - (q.fit.roundOverhead + 35 * q.fit.secondsPerPage)) < 1e-12)
    }
}
