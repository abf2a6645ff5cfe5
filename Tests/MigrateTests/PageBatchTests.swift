import Core
import Foundation
import Glibc
import Testing

@testable import Migrate
import TestSupport

func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
func le64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

/// A hand-built PAGES payload (§3.3), so tests can break any field.
struct HandBatch {
    struct Entry {
        var index: UInt64
        var encoding: UInt8
        var pad: UInt8 = 0
        var pad16: UInt16 = 0
        var length: UInt32
        var data: [UInt8]
    }

    var round: UInt32 = 1
    var count: UInt32? = nil  // nil: entries.count
    var reserved: UInt64 = 0
    var entries: [Entry]

    var bytes: [UInt8] {
        var out = le32(round) + le32(count ?? UInt32(entries.count)) + le64(reserved)
        for e in entries {
            out += le64(e.index) + [e.encoding, e.pad] + [UInt8(e.pad16 & 0xff), UInt8(e.pad16 >> 8)] + le32(e.length)
        }
        for e in entries { out += e.data }
        return out
    }
}

@Suite("page batches (protocol.md §3.3)")
struct PageBatchTests {
    static let size: UInt64 = 8 << 20

    @discardableResult
    func encode(_ encoder: PageBatchEncoder, _ index: UInt64, _ bytes: [UInt8]) -> PageEncoding {
        bytes.withUnsafeBytes { encoder.add(pageIndex: index, page: $0) }
    }

    // MARK: Golden bytes

    @Test("golden bytes: a zero, a raw and a delta page, uncompressed")
    func golden() {
        let cache = DeltaCache(capacityBytes: 1 << 20)
        let previous = [UInt8](repeating: 0x11, count: 4096)
        store(cache, 9, previous)  // page 9 was sent before with this content
        var changed = previous
        changed[300] = 0xEE  // XOR 0xFF at offset 300
        let raw = (0..<4096).map { UInt8(truncatingIfNeeded: $0) }

        let encoder = PageBatchEncoder(maxPages: 8, compressionLevel: nil, deltaCache: cache)
        encoder.begin(round: 3)
        #expect(encode(encoder, 5, [UInt8](repeating: 0, count: 4096)) == .zero)
        #expect(encode(encoder, 0x0102_0304_0506_0708, raw) == .raw)
        #expect(encode(encoder, 9, changed) == .delta)
        #expect(encoder.count == 3 && !encoder.isFull)
        let (flags, payload, stats) = encoder.finish()

        #expect(flags == 0)
        let expectedHead: [UInt8] = [
            0x03, 0x00, 0x00, 0x00,  // round 3
            0x03, 0x00, 0x00, 0x00,  // count 3
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // reserved
            // page 5, ZERO, no data
            0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // page 0x0102030405060708, RAW, 4096 bytes
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,
            // page 9, DELTA, 4 bytes
            0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
        ]
        #expect(payload.count == 16 + 3 * 16 + 4096 + 4)
        #expect(Array(payload.prefix(64)) == expectedHead)
        #expect(Array(payload[64..<(64 + 4096)]) == raw)
        // skip 300 (AC 02), literal of 1 byte, 0xFF.
        #expect(Array(payload.suffix(4)) == [0xAC, 0x02, 0x01, 0xFF])
        #expect(stats == {
            var s = BatchStats()
            s.zero = 1; s.raw = 1; s.delta = 1; s.deltaBytes = 4
            s.uncompressedBytes = 4164; s.payloadBytes = 4164
            return s
        }())
        #expect(cached(cache, 9) == changed, "the cache holds what was sent")
        #expect(cached(cache, 0x0102_0304_0506_0708) == raw)
        #expect(!cache.contains(5))
    }

    @Test("golden bytes: an unchanged cached page goes as the 3-byte no-op delta")
    func goldenUnchanged() throws {
        let cache = DeltaCache(capacityBytes: 1 << 20)
        let page = randomBytes(4096, seed: 8)
        store(cache, 2, page)
        let encoder = PageBatchEncoder(maxPages: 1, compressionLevel: nil, deltaCache: cache)
        encoder.begin(round: 0)
        #expect(encode(encoder, 2, page) == .delta)
        #expect(encoder.isFull)
        let (_, payload, _) = encoder.finish()
        #expect(payload == [0, 0, 0, 0, 1, 0, 0, 0] + le64(0) + le64(2) + [2, 0, 0, 0, 3, 0, 0, 0] + [0x00, 0x01, 0x00])
        let memory = try GuestMemory(size: Self.size)
        setPage(memory, 2, page)
        _ = try PageBatchDecoder().apply(flags: 0, payload: payload, to: memory, expectedRound: 0)
        #expect(pageBytes(memory, 2) == page)
    }

    @Test("compression is used only when it makes the payload smaller")
    func compressionChoice() throws {
        let encoder = PageBatchEncoder(maxPages: 4, compressionLevel: 1, deltaCache: nil)
        encoder.begin(round: 1)
        encode(encoder, 0, compressibleBytes(4096))
        let (flags, payload, stats) = encoder.finish()
        #expect(flags == 1)
        #expect(payload.count < 4096 && stats.payloadBytes == payload.count && stats.uncompressedBytes == 4128)
        let plain = try ZstdDecompressor().decompress(payload, maxOutputSize: 1 << 20)
        #expect(plain.count == 4128 && Array(plain[32...]) == compressibleBytes(4096))

        encoder.begin(round: 1)
        encode(encoder, 0, randomBytes(4096, seed: 1))
        let (flags2, payload2, _) = encoder.finish()
        #expect(flags2 == 0 && payload2.count == 4128, "incompressible: sent plain")
    }

    // MARK: Round trips

    enum Content: CaseIterable { case random, sparse, zero, mixed }

    func fill(_ memory: GuestMemory, _ content: Content, seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        for index in 0..<memory.pageCount {
            let page = memory.page(atIndex: index)!
            let kind: Content = content == .mixed ? [.random, .sparse, .zero][index % 3] : content
            switch kind {
            case .random, .mixed:
                for w in 0..<512 { page.storeBytes(of: generator.next(), toByteOffset: w * 8, as: UInt64.self) }
            case .sparse:
                page.initializeMemory(as: UInt8.self, repeating: 0)
                if index % 4 == 0 { page.storeBytes(of: generator.next() | 1, toByteOffset: (index % 512) * 8, as: UInt64.self) }
            case .zero:
                page.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }

    /// Sends every page of `source` (in `order`) to `destination`; returns the summed stats.
    @discardableResult
    func send(_ source: GuestMemory, to destination: GuestMemory, encoder: PageBatchEncoder,
              decoder: PageBatchDecoder, round: UInt32, order: [Int]? = nil, cachedFrom: Int = 0) throws -> BatchStats {
        var total = BatchStats()
        encoder.begin(round: round)
        for (position, index) in (order ?? Array(0..<source.pageCount)).enumerated() {
            encoder.add(pageIndex: UInt64(index), page: UnsafeRawBufferPointer(source.page(atIndex: index)!),
                        cache: position >= cachedFrom)
            if encoder.isFull {
                let (flags, payload, sent) = encoder.finish()
                let received = try decoder.apply(flags: flags, payload: payload, to: destination, expectedRound: round)
                #expect(received.zero == sent.zero && received.raw == sent.raw && received.delta == sent.delta)
                #expect(received.payloadBytes == sent.payloadBytes && received.uncompressedBytes == sent.uncompressedBytes)
                total += sent
                encoder.begin(round: round)
            }
        }
        if encoder.count > 0 {
            let (flags, payload, sent) = encoder.finish()
            _ = try decoder.apply(flags: flags, payload: payload, to: destination, expectedRound: round)
            total += sent
        }
        return total
    }

    func memoriesEqual(_ a: GuestMemory, _ b: GuestMemory) -> Bool {
        zip(a.regions, b.regions).allSatisfy { ra, rb in
            memcmp(ra.host, rb.host, Int(ra.range.size)) == 0
        }
    }

    @Test("round trips with and without zstd, and with deltas over later rounds",
          arguments: Content.allCases, [Int32?.none, 1, 3])
    func roundTrip(content: Content, level: Int32?) throws {
        let source = try GuestMemory(size: Self.size)
        let destination = try GuestMemory(size: Self.size)
        // The destination starts with junk in some pages, which ZERO must clear.
        fill(destination, .sparse, seed: 99)
        fill(source, content, seed: 1)
        let cache = DeltaCache(capacityBytes: Int(Self.size))  // room for every page
        let encoder = PageBatchEncoder(maxPages: 100, compressionLevel: level, deltaCache: cache)
        let decoder = PageBatchDecoder()
        let first = try send(source, to: destination, encoder: encoder, decoder: decoder, round: 0)
        #expect(memoriesEqual(source, destination))
        #expect(first.pages == source.pageCount && first.delta == 0)
        if content == .zero { #expect(first.zero == source.pageCount) }

        // Round 1: change a few bytes of every 7th page; resend those pages.
        var generator = SeededGenerator(seed: 7)
        let dirty = Array(stride(from: 0, to: source.pageCount, by: 7))
        let wereZero = dirty.filter { pageBytes(source, $0).allSatisfy { $0 == 0 } }.count
        for index in dirty {
            source.page(atIndex: index)![Int.random(in: 0..<4096, using: &generator)] ^= 0x5A
        }
        let second = try send(source, to: destination, encoder: encoder, decoder: decoder, round: 1, order: dirty.reversed())
        #expect(memoriesEqual(source, destination))
        // Pages sent as ZERO were dropped from the cache and go RAW; all others as deltas.
        #expect(second.raw == wereZero)
        #expect(second.delta == dirty.count - wereZero)
        #expect(second.deltaBytes <= 8 * second.delta, "one changed byte costs a few bytes of delta")
    }

    @Test("a round larger than the delta cache stores only its last pages, drops the stale entries of the others, and stays exact")
    func roundLargerThanTheCache() throws {
        let source = try GuestMemory(size: Self.size), destination = try GuestMemory(size: Self.size)
        fill(source, .random, seed: 3)
        let cache = DeltaCache(capacityBytes: 256 * DeltaCache.pageSize)
        let encoder = PageBatchEncoder(maxPages: 100, compressionLevel: nil, deltaCache: cache)
        let decoder = PageBatchDecoder()
        let pages = source.pageCount // 2,048
        // Round 0: only the last 256 pages are stored, and nothing stored is evicted again.
        let from = RoundSender.firstCached(pages: pages, capacity: cache.capacityPages)
        #expect(from == pages - 256)
        try send(source, to: destination, encoder: encoder, decoder: decoder, round: 0, cachedFrom: from)
        #expect(memoriesEqual(source, destination))
        #expect(cache.count == 256 && cache.evictions == 0)
        // Round 1: the cached pages are rewritten whole (no delta is smaller) and sent without
        // caching: their entries, now stale, must go.
        let tail = Array(from..<pages)
        let roundZero = tail.map { pageBytes(source, $0) }
        var generator = SeededGenerator(seed: 11)
        for index in tail {
            for w in 0..<512 { source.page(atIndex: index)!.storeBytes(of: generator.next(), toByteOffset: w * 8, as: UInt64.self) }
        }
        let second = try send(source, to: destination, encoder: encoder, decoder: decoder, round: 1, order: tail,
                              cachedFrom: tail.count)
        #expect(second.raw == tail.count)
        #expect(cache.count == 0)
        // Round 2: each page back to its round-0 bytes but one. A stale copy left in the cache
        // would make that a small delta against bytes the destination no longer has.
        for (index, bytes) in zip(tail, roundZero) {
            let page = source.page(atIndex: index)!
            bytes.withUnsafeBytes { page.copyMemory(from: $0) }
            page[index % 4096] ^= 0x5A
        }
        let third = try send(source, to: destination, encoder: encoder, decoder: decoder, round: 2, order: tail)
        #expect(third.raw == tail.count && third.delta == 0)
        #expect(memoriesEqual(source, destination))
    }

    @Test("the pages of a round stored in the delta cache: the last `capacity` of them, all when they fit")
    func firstCachedPosition() {
        #expect(RoundSender.firstCached(pages: 10, capacity: 20) == 0)
        #expect(RoundSender.firstCached(pages: 20, capacity: 20) == 0)
        #expect(RoundSender.firstCached(pages: 131_000, capacity: 8_192) == 122_808)
        #expect(RoundSender.firstCached(pages: 100, capacity: 0) == 100)
        #expect(RoundSender.firstCached(pages: 100, capacity: -5) == 100)
        #expect(RoundSender.firstCached(pages: 0, capacity: 8) == 0)
    }

    @Test("a batch that repeats a page applies its entries in order")
    func repeatedPage() throws {
        let memory = try GuestMemory(size: Self.size)
        let a = randomBytes(4096, seed: 1)
        var b = a
        b[17] ^= 1
        let delta = try #require(DeltaCodec.encode(page: b, previous: a))
        let batch = HandBatch(entries: [
            .init(index: 4, encoding: 1, length: 4096, data: a),
            .init(index: 4, encoding: 2, length: UInt32(delta.count), data: delta),
        ])
        _ = try PageBatchDecoder().apply(flags: 0, payload: batch.bytes, to: memory, expectedRound: nil)
        #expect(pageBytes(memory, 4) == b)
    }

    // MARK: Rejections

    /// A memory whose page 1 holds data, and a valid batch that would change
    /// pages 1 (ZERO), 2 (RAW) and 3 (DELTA) — so partial application shows.
    func victim() throws -> (GuestMemory, HandBatch) {
        let memory = try GuestMemory(size: Self.size)
        setPage(memory, 1, randomBytes(4096, seed: 11))
        setPage(memory, 3, randomBytes(4096, seed: 13))
        var changed = randomBytes(4096, seed: 13)
        changed[100] ^= 0xFF
        let delta = DeltaCodec.encode(page: changed, previous: randomBytes(4096, seed: 13))!
        let batch = HandBatch(round: 5, entries: [
            .init(index: 1, encoding: 0, length: 0, data: []),
            .init(index: 2, encoding: 1, length: 4096, data: randomBytes(4096, seed: 12)),
            .init(index: 3, encoding: 2, length: UInt32(delta.count), data: delta),
        ])
        return (memory, batch)
    }

    /// All of `memory` (one region at this size).
    func snapshot(_ memory: GuestMemory) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: memory.regions[0].host, count: Int(memory.regions[0].range.size)))
    }

    /// Expects the payload to be rejected and memory to be untouched.
    func expectRejected(_ payload: [UInt8], flags: UInt16 = 0, memory: GuestMemory, round: UInt32? = 5,
                        _ check: (CodecError) -> Bool = { _ in true }, _ comment: Comment,
                        sourceLocation: SourceLocation = #_sourceLocation) {
        let before = snapshot(memory)
        do {
            _ = try PageBatchDecoder().apply(flags: flags, payload: payload, to: memory, expectedRound: round)
            Issue.record("accepted: \(comment)", sourceLocation: sourceLocation)
        } catch {
            #expect(check(error), "\(comment): unexpected \(error)", sourceLocation: sourceLocation)
            #expect(!"\(error)".isEmpty)
        }
        #expect(snapshot(memory) == before, "memory changed: \(comment)", sourceLocation: sourceLocation)
    }

    func isMalformed(_ error: CodecError) -> Bool {
        if case .pageBatchMalformed = error { return true }
        return false
    }

    @Test("the valid victim batch itself is accepted (so the rejections below are meaningful)")
    func victimIsValid() throws {
        let (memory, batch) = try victim()
        let before = snapshot(memory)
        let stats = try PageBatchDecoder().apply(flags: 0, payload: batch.bytes, to: memory, expectedRound: 5)
        #expect(stats.zero == 1 && stats.raw == 1 && stats.delta == 1)
        #expect(snapshot(memory) != before)
        #expect(pageBytes(memory, 1).allSatisfy { $0 == 0 })
    }

    @Test("malformed headers and tables are rejected, leaving memory unchanged")
    func rejectsTable() throws {
        let (memory, good) = try victim()
        var b = good
        b.count = 0
        expectRejected(HandBatch(count: 0, entries: []).bytes, memory: memory, isMalformed, "count 0")
        b = good; b.count = 1025
        expectRejected(b.bytes, memory: memory, isMalformed, "count 1025")
        // 1025 real entries, too.
        let many = HandBatch(round: 5, entries: (0..<1025).map { .init(index: UInt64($0), encoding: 0, length: 0, data: []) })
        expectRejected(many.bytes, memory: memory, isMalformed, "1025 zero entries")
        b = good; b.count = 4
        expectRejected(b.bytes, memory: memory, isMalformed, "count larger than the table")
        b = good; b.reserved = 1 << 63
        expectRejected(b.bytes, memory: memory, isMalformed, "nonzero reserved header")
        b = good; b.round = 6
        expectRejected(b.bytes, memory: memory, isMalformed, "wrong round")
        b = good; b.entries[2].index = UInt64(memory.pageCount)
        expectRejected(b.bytes, memory: memory, isMalformed, "index == pageCount")
        b = good; b.entries[2].index = .max
        expectRejected(b.bytes, memory: memory, isMalformed, "index 2^64-1")
        b = good; b.entries[2].encoding = 3
        expectRejected(b.bytes, memory: memory, isMalformed, "unknown encoding")
        b = good; b.entries[2].pad = 1
        expectRejected(b.bytes, memory: memory, isMalformed, "nonzero entry byte 9")
        b = good; b.entries[2].pad16 = 0x100
        expectRejected(b.bytes, memory: memory, isMalformed, "nonzero entry bytes 10-11")
        expectRejected(Array(good.bytes.prefix(10)), memory: memory, isMalformed, "truncated header")
        expectRejected(Array(good.bytes.prefix(16 + 16 + 5)), memory: memory, isMalformed, "truncated table")
        expectRejected(good.bytes + [0], memory: memory, isMalformed, "a trailing byte")
        expectRejected(Array(good.bytes.dropLast()), memory: memory, isMalformed, "data one byte short")
        expectRejected(good.bytes, flags: 0x2, memory: memory, isMalformed, "unknown flag bit")
        expectRejected([], memory: memory, isMalformed, "empty payload")
    }

    @Test("entries whose data length does not fit their encoding are rejected")
    func rejectsLengths() throws {
        let (memory, good) = try victim()
        var b = good
        b.entries[1].length = 4095; b.entries[1].data.removeLast()
        expectRejected(b.bytes, memory: memory, isMalformed, "RAW with 4095 bytes")
        b = good; b.entries[1].length = 4097; b.entries[1].data.append(0)
        expectRejected(b.bytes, memory: memory, isMalformed, "RAW with 4097 bytes")
        b = good; b.entries[0].length = 1; b.entries[0].data = [0]
        expectRejected(b.bytes, memory: memory, isMalformed, "ZERO with data")
        b = good; b.entries[2].length = 0; b.entries[2].data = []
        expectRejected(b.bytes, memory: memory, isMalformed, "empty DELTA")
        b = good; b.entries[2].length = 4096; b.entries[2].data = [0, 1, 0] + [UInt8](repeating: 0, count: 4093)
        expectRejected(b.bytes, memory: memory, isMalformed, "DELTA of 4096 bytes")
        b = good; b.entries[1].length = 4000  // lengths no longer sum to the payload
        expectRejected(b.bytes, memory: memory, isMalformed, "lengths not summing")
        b = good; b.entries[1].length = UInt32.max
        expectRejected(b.bytes, memory: memory, isMalformed, "huge length")
    }

    @Test("a delta that does not decode is rejected before any page is touched")
    func rejectsBadDelta() throws {
        let (memory, good) = try victim()
        for bad: [UInt8] in [[0x80], [0x00, 0x00], [0x00, 0x05, 1, 2], [0xFF, 0x1F, 0x02, 1, 2] /* past the page */,
                             [0x80, 0x00, 0x01, 0xFF] /* non-minimal */] {
            var b = good
            b.entries[2].data = bad
            b.entries[2].length = UInt32(bad.count)
            expectRejected(b.bytes, memory: memory, isMalformed, "delta \(bad)")
        }
    }

    /// The offset of the first byte of a zstd frame's Frame_Content_Size field (RFC 8878 §3.1.1.1).
    static func contentSizeOffset(_ frame: [UInt8]) -> Int {
        let descriptor = frame[4]
        let singleSegment = descriptor & 0x20 != 0
        let dictionaryIDBytes = [0, 1, 2, 4][Int(descriptor & 3)]
        return 5 + (singleSegment ? 0 : 1) + dictionaryIDBytes
    }

    @Test("bad zstd payloads are rejected, leaving memory unchanged")
    func rejectsBadZstd() throws {
        let (memory, good) = try victim()
        let compressor = try ZstdCompressor(level: 1)
        // Declares more than the largest batch (1024 × 4112 + 16): refused before decoding.
        let huge = try compressor.compress([UInt8](repeating: 0, count: 1024 * 4112 + 17))
        expectRejected(huge, flags: 1, memory: memory, {
            if case .decompressSizeExceedsBound(_, let bound) = $0 { return bound == 1024 * 4112 + 16 }
            return false
        }, "declared size over 1024 × 4112 + 16")
        // Within that bound, but over count × 4112 + 16 for its count of 3.
        let padded = try compressor.compress(good.bytes + [UInt8](repeating: 0, count: 3 * 4112 + 16))
        expectRejected(padded, flags: 1, memory: memory, isMalformed, "declared size over count × 4112 + 16")
        // The ZSTD flag on a plain payload.
        expectRejected(good.bytes, flags: 1, memory: memory, {
            if case .decompressNotAFrame = $0 { return true }
            return false
        }, "ZSTD flag on a payload that is not zstd")
        // A good frame with its declared size changed: zstd fails on decoding.
        var frame = try compressor.compress(good.bytes)
        #expect(try PageBatchDecoder().apply(flags: 1, payload: frame, to: try GuestMemory(size: Self.size),
                                             expectedRound: 5).pages == 3)
        frame[Self.contentSizeOffset(frame)] &+= 1
        expectRejected(frame, flags: 1, memory: memory, { _ in true }, "bogus declared size")
        // Truncated and damaged frames.
        let intact = try compressor.compress(good.bytes)
        expectRejected(Array(intact.dropLast(3)), flags: 1, memory: memory, { _ in true }, "truncated frame")
        var damaged = intact
        damaged[damaged.count / 2] ^= 0x40
        expectRejected(damaged, flags: 1, memory: memory, { _ in true }, "damaged frame")
        // A compressed payload carrying a malformed batch.
        var b = good
        b.entries[2].encoding = 7
        expectRejected(try compressor.compress(b.bytes), flags: 1, memory: memory, isMalformed, "bad entry inside zstd")
    }

    // MARK: Throughput

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }

    @Test("throughput of encode and decode+apply (printed, not asserted)")
    func throughput() throws {
        let size: UInt64 = 64 << 20
        let source = try GuestMemory(size: size)
        let destination = try GuestMemory(size: size)
        let mb = Double(size) / 1e6
        let clock = ContinuousClock()
        // Fault the destination in first: first-touch page faults would
        // otherwise dominate the first decode measured.
        fill(destination, .random, seed: 9)
        fill(destination, .zero, seed: 9)

        func measure(_ name: String, level: Int32?, cache: DeltaCache?, round: UInt32 = 0) throws {
            let encoder = PageBatchEncoder(maxPages: 256, compressionLevel: level, deltaCache: cache)
            let decoder = PageBatchDecoder()
            var total = BatchStats()
            var encodeTime = Duration.zero, decodeTime = Duration.zero
            // Each batch is applied as soon as it is built, as a stream would,
            // so payload buffers are recycled by malloc instead of faulted in.
            var start = clock.now
            encoder.begin(round: round)
            for index in 0..<source.pageCount {
                encoder.add(pageIndex: UInt64(index), page: UnsafeRawBufferPointer(source.page(atIndex: index)!))
                if encoder.isFull || index == source.pageCount - 1 {
                    let (flags, payload, stats) = encoder.finish()
                    let encoded = clock.now
                    encodeTime += encoded - start
                    total += stats
                    _ = try decoder.apply(flags: flags, payload: payload, to: destination, expectedRound: round)
                    start = clock.now
                    decodeTime += start - encoded
                    encoder.begin(round: round)
                }
            }
            #expect(memoriesEqual(source, destination), "\(name): destination differs")
            let ratio = Double(total.payloadBytes) / Double(size)
            print("PageBatch \(name): encode \(Int(mb / Self.seconds(encodeTime))) MB/s, "
                + "decode+apply \(Int(mb / Self.seconds(decodeTime))) MB/s, "
                + "wire \(String(format: "%.3f", ratio))× (zero \(total.zero), raw \(total.raw), delta \(total.delta))")
        }

        // Map the source's untouched pages (to the zero page) before timing.
        for index in 0..<source.pageCount {
            _ = PageKind.classify(UnsafeRawBufferPointer(source.page(atIndex: index)!))
        }
        // Zero pages (never touched on the source; the destination is all zero too).
        try measure("zero, no zstd", level: nil, cache: nil)
        try measure("zero, zstd 1", level: 1, cache: nil)
        // Random (incompressible) pages.
        fill(source, .random, seed: 1)
        try measure("random, no zstd", level: nil, cache: nil)
        try measure("random, zstd 1", level: 1, cache: nil)
        // Mixed: a third each of random, sparse and zero pages.
        fill(source, .mixed, seed: 2)
        try measure("mixed, zstd 1", level: 1, cache: nil)
        // Deltas: prime a cache with every page, change 16 bytes of each, resend.
        fill(source, .random, seed: 3)
        let cache = DeltaCache(capacityBytes: Int(size))
        try measure("random (priming the cache), no zstd", level: nil, cache: cache)
        var generator = SeededGenerator(seed: 4)
        for index in 0..<source.pageCount {
            let page = source.page(atIndex: index)!
            let offset = Int.random(in: 0..<(4096 - 16), using: &generator) & ~7
            page.storeBytes(of: generator.next(), toByteOffset: offset, as: UInt64.self)
            page.storeBytes(of: generator.next(), toByteOffset: offset + 8, as: UInt64.self)
        }
        try measure("delta (16 changed bytes), no zstd", level: nil, cache: cache, round: 1)
        try measure("delta (unchanged pages), zstd 1", level: 1, cache: cache, round: 2)
        // Worst case for deltas: every cached page rewritten, so each delta attempt fails.
        fill(source, .random, seed: 5)
        try measure("random, cached but rewritten (delta attempts fail), no zstd", level: nil, cache: cache, round: 3)
        print("DeltaCache: hit rate \(cache.hitRate), evictions \(cache.evictions)")
    }

    @Test("error messages say what failed")
    func errorMessage() {
        let text = "\(CodecError.pageBatchMalformed(reason: "entry 2: unknown encoding 7"))"
        #expect(text.contains("page batch") && text.contains("unknown encoding 7"))
        #expect(text.contains("left as it was"))
    }
}
