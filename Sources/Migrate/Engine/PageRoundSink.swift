import Core

/// Where pre-copy rounds go: a migration's parallel streams (`RoundSender`) or a snapshot
/// file's page slots (`MappedPageSink`, protocol.md §6.4). `MigrationSender.precopy` and the
/// verification sweep run the same convergence logic over either.
protocol PageRoundSink: AnyObject {
    /// The hash of every page as last written (§3.5): the digest, and what the sweep compares.
    var sentHashes: PageHashTable { get }
    /// Writes `pages` as round `round`; with `skipZero`, all-zero pages are left out (the
    /// other end starts zeroed).
    func send(pages: PageBitmap, round: UInt32, skipZero: Bool) throws(MigrationError) -> RoundStats
}

extension RoundSender: PageRoundSink {}
