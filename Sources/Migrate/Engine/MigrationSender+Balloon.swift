import Core

// The balloon map ahead of the pause (capability BALLOON_MAP, protocol.md §3.2.1): BALLOON
// frames on the control stream after pre-copy rounds whenever the map changed, and one final
// update in the pause; STATE then carries the PV section without the map, so the pause no
// longer saves, sends and reads a map that grows with the guest (288 KiB at 9 GiB).

extension MigrationSender {
    /// The map's transfer when both BALLOON_MAP and PV_STATE were granted (the map belongs to
    /// the PV section); nil: the map travels in STATE as before.
    func balloonMapSender(granted: Capabilities) -> BalloonMapSender? {
        guard granted.isSuperset(of: [.balloonMap, .pvState]) else { return nil }
        return BalloonMapSender(wordCount: machine.pv.balloonedPages.words.count)
    }

    /// Sends what changed in the map since the last BALLOON (nothing when nothing did, unless
    /// `final`: the pause's update is always sent, possibly empty, with the digest of the map
    /// at the pause). `words`: the map now — in the pause the one the memory digest excludes.
    func sendBalloonUpdate(_ sync: inout BalloonMapSender, words: [UInt64], on channel: FrameChannel,
                           final: Bool) throws(MigrationError) {
        guard let update = sync.update(to: words, final: final) else { return }
        try sendControl(channel, .balloon(update))
    }
}
