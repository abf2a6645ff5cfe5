import Core
import Glibc
import Migrate

/// Guest memory for the page-batch target: both RAM regions of §1.2 (3 GiB low, 4 MiB high,
/// reserved but untouched until written), with a known pattern in some pages so that a write
/// that should not have happened shows. Pages the harness changes are restored after each input.
final class FuzzMemory: @unchecked Sendable {
    static let shared = FuzzMemory()
    static let pageSize = PageBatchLayout.pageSize

    let memory: GuestMemory
    let lowPages: Int
    var pageCount: Int { memory.pageCount }

    /// The patterned pages' contents, by index.
    private var patterns: [Int: [UInt8]] = [:]
    private static let zeroPage = [UInt8](repeating: 0, count: pageSize)

    private init() {
        do { memory = try GuestMemory(size: (3 << 30) + (4 << 20)) } catch { fatalError("\(error)") }
        lowPages = memory.regions[0].pageCount
        // Every third page of the first and last 1024 carries a pattern; the rest are zero.
        for i in Array(0..<1024) + Array((pageCount - 1024)..<pageCount) where i % 3 == 1 {
            patterns[i] = (0..<Self.pageSize).map { UInt8(truncatingIfNeeded: i &* 31 &+ $0 &* 7) | 1 }
            page(i).copyBytes(from: patterns[i]!)
        }
    }

    func original(_ i: Int) -> [UInt8] { patterns[i] ?? Self.zeroPage }

    /// Whether page `i` still holds what `original` says, without copying it.
    func isOriginal(_ i: Int) -> Bool {
        let p = UnsafeRawBufferPointer(page(i))
        guard let pattern = patterns[i] else { return PageKind.classify(p) == .zero }
        return pattern.withUnsafeBytes { memcmp($0.baseAddress!, p.baseAddress!, Self.pageSize) == 0 }
    }

    /// The host bytes of RAM page `i` (below `pageCount`).
    func page(_ i: Int) -> UnsafeMutableRawBufferPointer {
        let gpa = i < lowPages ? UInt64(i) * 4096 : GuestMemory.highMemoryBase + UInt64(i - lowPages) * 4096
        do { return try memory.bytes(at: GuestPhysicalAddress(gpa), count: 4096) } catch { fatalError("\(error)") }
    }

    func contents(_ i: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(page(i))) }

    func restore(_ i: Int) { page(i).copyBytes(from: original(i)) }
}

/// PAGES payloads (protocol.md §3.3) through `PageBatchDecoder.apply`, in two modes chosen by
/// the first byte: a hostile payload (with frame flags from the second byte), or a sequence of
/// page writes sent through the real `PageBatchEncoder` (with or without zstd and deltas).
enum PagesTarget: FuzzTarget {
    static let name = "pages"
    static let invariant = """
        hostile batches: the decoder accepts exactly the batches an independent reading of §3.3 \
        accepts (after zstd), a rejected batch leaves every page unchanged, an accepted one leaves \
        exactly the pages the reference computes and reports each entry once, in order; encoded \
        batches: after applying every batch the encoder produced, the destination's pages equal the \
        source's (deltas against the encoder's cache included)
        """

    nonisolated(unsafe) static let decoder = PageBatchDecoder()
    /// The reference side's own zstd context (the decoder keeps one per stream, so does this).
    nonisolated(unsafe) static let decompressor: ZstdDecompressor = {
        do { return try ZstdDecompressor() } catch { fatalError("\(error)") }
    }()
    static let maximumPlain = PageBatchLayout.maximumPayload(count: PageBatchLayout.maximumCount)

    static func run(_ input: [UInt8]) {
        guard input.count >= 2 else { return }
        if input[0] & 1 == 0 { hostile(input) } else { roundTrip(input) }
    }

    static func hostile(_ input: [UInt8]) {
        let flags = input[1] & 0x80 == 0 ? UInt16(input[1] & 1) : UInt16(input[1]) << 4 | UInt16(input[1] & 1)
        let payload = Array(input[2...])
        let m = FuzzMemory.shared
        var plain: [UInt8]? = payload
        if flags & FrameHeader.flagZstd != 0 {
            plain = try? decompressor.decompress(payload, maxOutputSize: maximumPlain)
        }
        let expected = flags & ~FrameHeader.flagZstd != 0 ? nil
            : plain.flatMap { Reference.batch($0, pageCount: m.pageCount, compressed: flags != 0) }

        var applied: [Int] = []
        let stats = try? decoder.apply(flags: flags, payload: payload, to: m.memory, expectedRound: nil) { index, _ in
            applied.append(index)
        }
        guard let stats, let expected else {
            check(stats == nil, "the decoder accepted a batch §3.3 rejects")
            check(expected == nil, "the decoder rejected a batch §3.3 accepts")
            // Nothing may have been written: check every page the table names.
            if let plain, plain.count >= 16 {
                var seen = Set<UInt64>()
                for e in stride(from: 16, to: min(plain.count - 15, 16 + 16 * 1024), by: 16) {
                    let index = (0..<8).reduce(0) { $0 | UInt64(plain[e + $1]) << (8 * UInt64($1)) }
                    if index < UInt64(m.pageCount), seen.insert(index).inserted {
                        check(m.isOriginal(Int(index)), "a rejected batch changed page \(index)")
                    }
                }
            }
            return
        }
        check(applied == expected.map(\.index), "pages applied \(applied), the batch holds \(expected.map(\.index))")
        check(stats.pages == expected.count, "stats count \(stats.pages) pages of \(expected.count)")
        var shadow: [Int: [UInt8]] = [:]
        for entry in expected { shadow[entry.index] = Reference.apply(entry, to: shadow[entry.index] ?? m.original(entry.index)) }
        for (index, page) in shadow {
            check(m.contents(index) == page, "page \(index) differs from the reference after the batch")
            m.restore(index)
        }
    }

    /// Input after the options byte: ops `{ u8 slot, u16 offset, u8 length, length bytes }`.
    /// Each op writes its bytes into a source page (length 0 zeroes the page) and adds the page
    /// to the batch. Slots map to zero pages of both regions.
    static func roundTrip(_ input: [UInt8]) {
        let options = input[1]
        let m = FuzzMemory.shared
        let cache = options & 0x20 == 0 ? nil : DeltaCache(capacityBytes: (options & 0x40 == 0 ? 64 : 4) * 4096)
        let encoder = PageBatchEncoder(maxPages: 1 + Int(options & 0x0f),
                                       compressionLevel: options & 0x10 == 0 ? nil : 1, deltaCache: cache)
        var source: [Int: [UInt8]] = [:]
        var sent = 0, received = 0
        var open = false
        func flush() {
            guard open else { return }
            open = false
            let (flags, payload, stats) = encoder.finish()
            sent += stats.pages
            do {
                received += try decoder.apply(flags: flags, payload: payload, to: m.memory, expectedRound: 1).pages
            } catch {
                check(false, "a batch from PageBatchEncoder was rejected: \(error)")
            }
        }
        var at = 2
        while input.count - at >= 4 {
            let slot = Int(input[at])
            let index = slot < 128 ? 1024 + slot : m.pageCount - 1024 - 256 + slot
            let offset = (Int(input[at + 1]) | Int(input[at + 2]) << 8) % FuzzMemory.pageSize
            let length = min(Int(input[at + 3]), input.count - at - 4, FuzzMemory.pageSize - offset)
            at += 4
            var page = source[index] ?? [UInt8](repeating: 0, count: FuzzMemory.pageSize)
            if length == 0 {
                page = [UInt8](repeating: 0, count: FuzzMemory.pageSize)
            } else {
                page.replaceSubrange(offset..<(offset + length), with: input[at..<(at + length)])
            }
            at += length
            source[index] = page
            if !open { encoder.begin(round: 1); open = true }
            page.withUnsafeBytes { _ = encoder.add(pageIndex: UInt64(index), page: $0) }
            if encoder.isFull { flush() }
        }
        flush()
        check(sent == received, "sent \(sent) pages, the decoder applied \(received)")
        for (index, page) in source {
            check(m.contents(index) == page, "page \(index) differs between source and destination")
            m.restore(index)
        }
    }

    static func seeds() -> [[UInt8]] {
        // Hostile-mode seeds are real encoder output: a zero, a raw and a delta page, plain and zstd.
        var seeds: [[UInt8]] = []
        for level: Int32? in [nil, 1] {
            let encoder = PageBatchEncoder(maxPages: 4, compressionLevel: level, deltaCache: DeltaCache())
            var page = [UInt8](repeating: 0, count: FuzzMemory.pageSize)
            encoder.begin(round: 0)
            page.withUnsafeBytes { _ = encoder.add(pageIndex: 1, page: $0) }
            page[100] = 7
            page.withUnsafeBytes { _ = encoder.add(pageIndex: 4, page: $0) }
            _ = encoder.finish()
            encoder.begin(round: 1)
            page[200] = 9
            page.withUnsafeBytes { _ = encoder.add(pageIndex: 4, page: $0) }
            page.withUnsafeBytes { _ = encoder.add(pageIndex: UInt64(FuzzMemory.shared.pageCount - 2), page: $0) }
            let (flags, payload, _) = encoder.finish()
            seeds.append([0, UInt8(flags)] + payload)
        }
        // Round-trip seeds: a few writes with deltas, with and without zstd.
        let writes: [UInt8] = [3, 0, 0, 4, 1, 2, 3, 4, 3, 16, 0, 2, 9, 9, 200, 0, 1, 1, 5, 3, 0, 0]
        seeds.append([1, 0x23] + writes)
        seeds.append([1, 0x31] + writes)
        return seeds
    }
}
