@testable import Core
import Testing

@testable import Migrate

/// The balloon map ahead of the pause (capability BALLOON_MAP, protocol.md §3.2.1): the
/// BALLOON payload's layout and checks, the source's delta logic and the destination's
/// assembly, ending with exactly the source's map.
@Suite("BALLOON frames (protocol.md §3.2.1)")
struct BalloonMapTests {
    @Test("the payload's layout is the spec's, and it decodes to what was encoded")
    func layout() throws {
        let update = BalloonUpdate(isFinal: true, mapDigest: 0x0102_0304_0506_0708,
                                   runs: [.init(firstWord: 2, words: [0xff]), .init(firstWord: 5, words: [1, 2])])
        let bytes = update.encoded()
        let expected: [UInt8] = [1, 0, 0, 0, 2, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1,
                                 2, 0, 0, 0, 1, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0,
                                 5, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        #expect(bytes == expected)
        #expect(try BalloonUpdate(decoding: bytes) == update)
        let frame = Frame.balloon(update).encoded()
        #expect(Array(frame[4..<6]) == [20, 0])
        #expect(try Frame.decode(FrameHeader(decoding: Array(frame[0..<16])), payload: Array(frame[16...])) == .balloon(update))
    }

    static let bad: [(String, [UInt8])] = [
        ("short header", [0, 0, 0, 0, 0, 0, 0, 0]),
        ("final flag 2", [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("reserved byte", [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("empty run", [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]),
        ("run cut short", [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("trailing bytes", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]),
        ("overlapping runs", BalloonUpdate(isFinal: false, mapDigest: 0,
                                           runs: [.init(firstWord: 4, words: [1, 1]), .init(firstWord: 5, words: [1])]).encoded()),
        ("runs out of order", BalloonUpdate(isFinal: false, mapDigest: 0,
                                            runs: [.init(firstWord: 4, words: [1]), .init(firstWord: 1, words: [1])]).encoded()),
    ]

    @Test("a malformed payload is refused", arguments: bad.indices)
    func malformed(_ i: Int) {
        let (what, bytes) = Self.bad[i]
        #expect(throws: WireError.self, "\(what)") { try BalloonUpdate(decoding: bytes) }
    }

    @Test("the digest is 0 for an empty map and changes with any one word")
    func digest() {
        var words = [UInt64](repeating: 0, count: 40)
        #expect(BalloonMapDigest.compute(words) == 0)
        words[3] = 0xf0
        let before = BalloonMapDigest.compute(words)
        for i in words.indices {
            for bit in [0, 17, 63] {
                var changed = words
                changed[i] ^= 1 << UInt64(bit)
                #expect(BalloonMapDigest.compute(changed) != before, "word \(i) bit \(bit)")
            }
        }
        // The same word at another index is another term: moving a word changes the digest.
        var moved = [UInt64](repeating: 0, count: 40)
        moved[4] = 0xf0
        #expect(BalloonMapDigest.compute(moved) != before)
    }

    /// A map of `pages` pages with the given pages ballooned.
    func map(_ pages: Int, _ ballooned: [Range<Int>]) -> [UInt64] {
        var b = PageBitmap(pageCount: pages)
        for r in ballooned { b.insert(range: r.lowerBound, count: r.count) }
        return b.words
    }

    @Test("updates carry what changed, nothing when nothing did; the destination ends with the source's map")
    func deltas() throws {
        let pages = 64 * 1500 + 13 // three compare blocks, a partial last word
        var source = BalloonMapSender(wordCount: (pages + 63) / 64)
        var destination = BalloonMapReceiver(pageCount: pages)
        let maps = [map(pages, [0..<100, 70_000..<70_200]), map(pages, [0..<100, 70_000..<70_200]),
                    map(pages, [50..<100, 96_000 - 5..<pages]), map(pages, [])]
        var sent: [BalloonUpdate] = []
        for m in maps {
            if let u = source.update(to: m, final: false) { sent.append(u) }
            try destination.apply(sent.last!)
            #expect(destination.words == m)
            #expect(destination.digest == BalloonMapDigest.compute(m))
        }
        // The second map equalled the first: no update for it.
        #expect(sent.count == 3)
        // The first: one run per changed stretch of words, only the changed words.
        #expect(sent[0].runs.map(\.firstWord) == [0, 70_000 / 64])
        #expect(sent[0].runs.map(\.words.count) == [2, (70_200 - 1) / 64 - 70_000 / 64 + 1])
        // The pause: the final update is sent even when empty, with the digest of the map.
        let pause = source.update(to: maps[3], final: true)
        let final = try #require(pause)
        #expect(final.isFinal && final.runs.isEmpty && final.mapDigest == 0)
        try destination.apply(final)
        #expect(destination.isFinal && destination.words == maps[3])
        #expect(throws: BalloonMapError.afterFinal) { try destination.apply(final) }
    }

    @Test("the destination refuses an update that does not fit its map or its digest, changing nothing")
    func refusals() throws {
        let pages = 64 * 3 + 10
        var d = BalloonMapReceiver(pageCount: pages)
        let words: [UInt64] = [0, 0, 0, 1 << 10]
        #expect(throws: BalloonMapError.pastLastPage(pageCount: pages)) {
            try d.apply(BalloonUpdate(isFinal: false, mapDigest: BalloonMapDigest.compute(words),
                                      runs: [.init(firstWord: 3, words: [1 << 10])]))
        }
        #expect(throws: BalloonMapError.outOfRange(firstWord: 3, count: 2, mapWords: 4)) {
            try d.apply(BalloonUpdate(isFinal: false, mapDigest: 0, runs: [.init(firstWord: 3, words: [1, 1])]))
        }
        let good: [UInt64] = [0, 0xff, 0, 1]
        #expect(throws: BalloonMapError.self) {
            try d.apply(BalloonUpdate(isFinal: true, mapDigest: BalloonMapDigest.compute(good) &+ 1,
                                      runs: [.init(firstWord: 1, words: [0xff]), .init(firstWord: 3, words: [1])]))
        }
        #expect(d.words == [0, 0, 0, 0] && !d.isFinal)
        try d.apply(BalloonUpdate(isFinal: true, mapDigest: BalloonMapDigest.compute(good),
                                  runs: [.init(firstWord: 1, words: [0xff]), .init(firstWord: 3, words: [1])]))
        #expect(d.words == good && d.isFinal)
    }

    @Test("STATE gets the assembled map only once it is final and when its PV section has none of its own")
    func insertIntoState() throws {
        let pages = 128
        var d = BalloonMapReceiver(pageCount: pages)
        try d.apply(BalloonUpdate(isFinal: false, mapDigest: BalloonMapDigest.compute([0, 6]), runs: [.init(firstWord: 1, words: [6])]))
        var state = MachineState(memorySize: UInt64(pages * 4096), vcpus: [],
                                 platform: .init(clock: .init(bytes: []), irqChips: nil),
                                 pv: .init(guestVersion: 2, controlPage: 0x1000, balloonWords: []), serial: nil)
        #expect(throws: MigrationError.self) { try MigrationReceiver.insert(d, into: &state) }
        try d.apply(BalloonUpdate(isFinal: true, mapDigest: d.digest, runs: []))
        var carrying = state
        carrying.pv!.balloonWords = [0, 6]
        #expect(throws: MigrationError.self) { try MigrationReceiver.insert(d, into: &carrying) }
        try MigrationReceiver.insert(d, into: &state)
        #expect(state.pv!.balloonWords == [0, 6])
        var noPV = state
        noPV.pv = nil
        #expect(throws: MigrationError.self) { try MigrationReceiver.insert(d, into: &noPV) }
    }
}
