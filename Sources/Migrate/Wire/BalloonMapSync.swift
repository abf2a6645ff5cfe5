import Core
import Foundation

/// The source's side of the balloon map's transfer (protocol.md §3.2.1): the map the
/// destination has been sent, and the update that brings it to the current one.
public struct BalloonMapSender: Sendable {
    /// What the destination holds after every update returned so far.
    public private(set) var sent: [UInt64]
    /// `BalloonMapDigest` of `sent`, kept up to date word by word.
    public private(set) var digest: UInt64 = 0
    /// Words compared in one `memcmp`; only blocks that differ are walked word by word.
    static let block = 512

    public init(wordCount: Int) { sent = [UInt64](repeating: 0, count: wordCount) }

    /// The update from `sent` to `current` (which must have `sent.count` words), or nil when
    /// nothing changed and `final` is false. The comparison runs at memory speed (`memcmp`
    /// over blocks: ~30 µs for 9 GiB's 288 KiB), the rest costs what changed.
    public mutating func update(to current: [UInt64], final: Bool) -> BalloonUpdate? {
        precondition(current.count == sent.count, "balloon map of \(current.count) words, \(sent.count) expected")
        var runs: [BalloonUpdate.Run] = []
        var start = 0
        while start < current.count {
            let end = min(start + Self.block, current.count)
            if !Self.equal(current, sent, start..<end) { appendRuns(current, start..<end, to: &runs) }
            start = end
        }
        guard final || !runs.isEmpty else { return nil }
        return BalloonUpdate(isFinal: final, mapDigest: digest, runs: runs)
    }

    /// Walks `range` word by word, records the changed words in `sent` and `digest` and
    /// appends them as runs (a run touching the previous one extends it).
    private mutating func appendRuns(_ current: [UInt64], _ range: Range<Int>, to runs: inout [BalloonUpdate.Run]) {
        for i in range where current[i] != sent[i] {
            digest = digest &- BalloonMapDigest.term(i, sent[i]) &+ BalloonMapDigest.term(i, current[i])
            sent[i] = current[i]
            if let last = runs.last, Int(last.firstWord) + last.words.count == i {
                runs[runs.count - 1].words.append(current[i])
            } else {
                runs.append(BalloonUpdate.Run(firstWord: UInt32(i), words: [current[i]]))
            }
        }
    }

    private static func equal(_ a: [UInt64], _ b: [UInt64], _ range: Range<Int>) -> Bool {
        a.withUnsafeBytes { pa in
            b.withUnsafeBytes { pb in
                // Sound: `range` lies within both arrays (same count, checked by the caller),
                // so both byte ranges are inside their buffers.
                memcmp(pa.baseAddress! + 8 * range.lowerBound, pb.baseAddress! + 8 * range.lowerBound, 8 * range.count) == 0
            }
        }
    }
}

/// The destination's side (protocol.md §3.2.1): the map assembled from BALLOON frames, each
/// checked against the digest it carries before the next is read.
public struct BalloonMapReceiver: Sendable {
    public private(set) var words: [UInt64]
    public private(set) var digest: UInt64 = 0
    /// The pause's update arrived: the map is the source's at the pause.
    public private(set) var isFinal = false
    private let pageCount: Int

    public init(pageCount: Int) {
        self.pageCount = pageCount
        words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
    }

    /// Applies one update. Throws — changing nothing — for words past the map, bits past the
    /// last page, an update after the final one, or a map whose digest is not the frame's.
    public mutating func apply(_ update: BalloonUpdate) throws(BalloonMapError) {
        guard !isFinal else { throw .afterFinal }
        var next = digest
        for run in update.runs {
            let first = Int(run.firstWord)
            guard first + run.words.count <= words.count else {
                throw .outOfRange(firstWord: first, count: run.words.count, mapWords: words.count)
            }
            for (k, w) in run.words.enumerated() {
                next = next &- BalloonMapDigest.term(first + k, words[first + k]) &+ BalloonMapDigest.term(first + k, w)
            }
        }
        let tailBits = pageCount % 64
        if tailBits != 0, let last = update.runs.last, Int(last.firstWord) + last.words.count == words.count,
           last.words[last.words.count - 1] >> UInt64(tailBits) != 0 {
            throw .pastLastPage(pageCount: pageCount)
        }
        guard next == update.mapDigest else { throw .digestMismatch(expected: update.mapDigest, actual: next) }
        for run in update.runs {
            let first = Int(run.firstWord)
            for (k, w) in run.words.enumerated() { words[first + k] = w }
        }
        digest = next
        isFinal = update.isFinal
    }
}

/// Why a BALLOON frame was refused (protocol.md §3.2.1). A digest mismatch is answered with
/// ERROR 4, the rest with ERROR 1.
public enum BalloonMapError: Error, Equatable, CustomStringConvertible {
    case afterFinal
    case outOfRange(firstWord: Int, count: Int, mapWords: Int)
    case pastLastPage(pageCount: Int)
    case digestMismatch(expected: UInt64, actual: UInt64)
    case finalMissing

    public var description: String {
        switch self {
        case .afterFinal: return "a BALLOON frame after the final one"
        case let .outOfRange(f, n, m): return "a BALLOON run of \(n) words at word \(f) runs past the map's \(m) words"
        case let .pastLastPage(p): return "a BALLOON run sets bits past the guest's last page (\(p) pages)"
        case let .digestMismatch(e, a):
            return "balloon map digest mismatch (BALLOON says 0x\(String(e, radix: 16)), the map built here 0x\(String(a, radix: 16))): "
                + "an update was lost or damaged on the way"
        case .finalMissing: return "STATE arrived before the final BALLOON frame"
        }
    }
}
