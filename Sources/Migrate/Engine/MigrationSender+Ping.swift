import Core

extension MigrationSender {
    /// What one PING told: the round trip, and with `COMMIT_WORK` granted the destination's
    /// estimate of its own commit work (PONG_WORK; nil from a destination that sent PONG).
    struct PingSample: Sendable, Equatable {
        var roundTrip: Double
        var destinationPrepare: Double?
        var destinationStart: Double?
    }

    /// One PING → PONG (or PONG_WORK) on the control stream (protocol.md §3.2, capabilities
    /// PING and COMMIT_WORK): the commit's round trip as it is now, for `RoundTripEstimate`.
    /// Sent by the request thread between rounds, after the round's ROUND frame — the stream
    /// workers have finished writing then, so the control stream has one writer and one
    /// reader, as at the commit. `work`: COMMIT_WORK was granted, so the answer must be PONG_WORK.
    func pingRoundTrip(_ control: FrameChannel, nonce: UInt64, work: Bool) throws(MigrationError) -> PingSample {
        let sent = ContinuousClock.now
        try sendControl(control, .ping(nonce: nonce))
        let frame = try control.receive()
        let roundTrip = (ContinuousClock.now - sent).seconds
        switch frame {
        case let .pong(echoed) where echoed == nonce && !work: return PingSample(roundTrip: roundTrip)
        case let .pongWork(echoed, prepare, start) where echoed == nonce && work:
            return PingSample(roundTrip: roundTrip, destinationPrepare: Double(prepare) / 1e6, destinationStart: Double(start) / 1e6)
        case let .error(report): throw .peer(report)
        case let .pong(echoed), let .pongWork(echoed, _, _):
            guard (frame.type == .pongWork) == work else {
                throw .wire(.unexpected(frame: frame.name, state: "awaiting \(work ? "PONG_WORK" : "PONG")"))
            }
            throw .wire(.malformed(type: frame.name, reason: "nonce \(echoed), PING \(nonce) awaited"))
        default: throw .wire(.unexpected(frame: frame.name, state: "awaiting PONG"))
        }
    }

    /// What one stop of the vCPUs between rounds measured (`stopSample`).
    struct StopSample: Sendable, Equatable {
        /// Parking every running vCPU, as the pause begins.
        var stop: Double
        /// Saving the state while they were parked, encoding it and its digest, as the pause
        /// does (`stateBlob`, `StateDigest`); nil when saving failed (the estimate stays).
        var stateSave: Double?
        /// The encoded state's size: what STATE will carry.
        var stateBytes: Int?
        /// The PING sent while they were parked (nil: none was asked for).
        var ping: PingSample?
    }

    /// Parks every running vCPU and lets it go again, as the pause begins (`Machine.pause`'s
    /// kick and wait): how long stopping them takes now, for `DowntimePredictor.stopVCPUs`;
    /// and, while they are parked, the state the pause will save (without the NIC's indices),
    /// encoded and digested after they run again: for `DowntimePredictor.stateSave`, which
    /// grows with the balloon map (288 KiB at 9 GiB); and `probe`, the PING (`nonce`) whose round trip
    /// stands for the commit's (COMMIT and GO are sent with the guest paused). This thread
    /// holds the pause's short slice (`LatencySlice`) meanwhile, as it does in the pause. The
    /// guest loses the stop, the save of the vCPU/platform state and the round trip (~0.3–0.6 ms
    /// on a quiet host) once per small pre-copy round. Without `withBalloonMap` (BALLOON_MAP
    /// granted) the map is left out, as the pause does. A failed PING is thrown once the vCPUs
    /// run again.
    func stopSample(withBalloonMap: Bool,
                    probe: ((UInt64) throws(MigrationError) -> PingSample)? = nil,
                    nonce: UInt64 = 0) throws(MigrationError) -> StopSample {
        let slice = LatencySlice()
        defer { slice.end() }
        let began = ContinuousClock.now
        let (stop, save, saved, ping) = machine.withVCPUsPaused {
            () -> (Double, Double, MachineState?, Result<PingSample, MigrationError>?) in
            let stopped = ContinuousClock.now
            let state = try? machine.stateForTiming()
            let saved = ContinuousClock.now
            let ping = probe.map { probe in Result { () throws(MigrationError) in try probe(nonce) } }
            return ((stopped - began).seconds, (saved - stopped).seconds, state, ping)
        }
        let answer: PingSample?
        switch ping {
        case .none: answer = nil
        case let .success(sample)?: answer = sample
        case let .failure(error)?: throw error
        }
        guard var state = saved else { return StopSample(stop: stop, stateSave: nil, ping: answer) }
        if !withBalloonMap { state.pv?.balloonWords = [] }
        let encoding = ContinuousClock.now
        let encoded = state.encoded()
        _ = StateDigest.compute(encoded)
        return StopSample(stop: stop, stateSave: save + (ContinuousClock.now - encoding).seconds, stateBytes: encoded.count,
                          ping: answer)
    }
}
