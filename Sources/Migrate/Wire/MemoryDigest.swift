// The memory digest both sides compare before the destination resumes (protocol.md §3.5).

import Core
import Dispatch

/// `digest = Σ mix(page_index, page)` over the pages with data (not all
/// zeros, not ballooned), a wrapping u64 sum, so it is independent of order
/// and can be computed in parallel. It detects lost, stale or damaged pages;
/// it is not a cryptographic hash (TLS protects the channel).
public enum MemoryDigest {
    /// The multiplier of every lane (the 64-bit FNV prime).
    static let prime: UInt64 = 0x100_0000_01b3

    /// `mix(page_index, page)` exactly as §3.5 defines it: four lanes over the
    /// page's 512 little-endian u64 words, then a final avalanche.
    /// `page` must hold 4096 bytes.
    @inline(__always)
    public static func mix(pageIndex i: UInt64, page: UnsafeRawBufferPointer) -> UInt64 {
        precondition(page.count == 4096, "the digest mixes 4096-byte pages, got \(page.count)")
        let p = prime
        var a = i ^ 0x9e37_79b9_7f4a_7c15
        var b = i ^ 0xc2b2_ae3d_27d4_eb4f
        var c = i ^ 0x1656_67b1_9e37_79f9
        var d = i ^ 0x27d4_eb2f_1656_67c5
        // Sound: page.count == 4096 was checked, so every load at
        // offset + 24 + 8 <= 4096 stays inside the page; loadUnaligned needs
        // no alignment.
        let base = page.baseAddress!
        var offset = 0
        while offset < 4096 {
            a = (a ^ UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt64.self))) &* p
            b = (b ^ UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))) &* p
            c = (c ^ UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self))) &* p
            d = (d ^ UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self))) &* p
            offset += 32
        }
        var h = a ^ b.rotateLeft(16) ^ c.rotateLeft(32) ^ d.rotateLeft(48)
        h ^= h >> 29
        h = h &* p
        h ^= h >> 32
        return h
    }

    /// The digest of `memory`: Σ `mix` over the pages with data, wrapping.
    ///
    /// Only pages in `candidates` are read (pass `memory.residentPages()`: a
    /// page that is not resident is zero, and reading it would fault it in);
    /// pages in `excluding` (the balloon) and all-zero pages do not count.
    /// The pages are split over `threads` threads (at least 1).
    /// Returns the digest and the number of pages with data.
    public static func compute(memory: GuestMemory, candidates: PageBitmap, excluding: PageBitmap?,
                               threads: Int = 2) -> (digest: UInt64, pagesWithData: UInt64) {
        let pageCount = memory.pageCount
        let regionBases = memory.regions.map { UnsafeRawPointer($0.host) }
        let regionFirstPages = memory.regionPageOffsets
        let regionPageCounts = memory.regions.map(\.pageCount)
        let wordCount = (min(pageCount, candidates.pageCount) + 63) / 64
        let workers = max(1, min(threads, max(1, wordCount)))

        // Chunks of 64 bitmap words (4096 pages, 16 MiB), dealt round-robin to
        // the workers so that sparse and dense parts of memory spread evenly.
        let wordsPerChunk = 64
        let chunkCount = (wordCount + wordsPerChunk - 1) / wordsPerChunk
        let candidateWords = candidates.words
        let excludedWords = excluding?.words

        let sums = UnsafeMutableBufferPointer<(UInt64, UInt64)>.allocate(capacity: workers)
        sums.initialize(repeating: (0, 0))
        defer { sums.deallocate() }

        func work(_ worker: Int) {
            var digest: UInt64 = 0
            var pages: UInt64 = 0
            var chunk = worker
            while chunk < chunkCount {
                let firstWord = chunk * wordsPerChunk
                for wordIndex in firstWord..<min(wordCount, firstWord + wordsPerChunk) {
                    var word = candidateWords[wordIndex]
                    if let excludedWords, wordIndex < excludedWords.count { word &= ~excludedWords[wordIndex] }
                    while word != 0 {
                        let index = wordIndex * 64 + word.trailingZeroBitCount
                        word &= word - 1
                        guard index < pageCount else { break }
                        // Locate the page: regions are few, in page-index order.
                        var region = regionBases.count - 1
                        while regionFirstPages[region] > index { region -= 1 }
                        let offsetInRegion = index - regionFirstPages[region]
                        guard offsetInRegion < regionPageCounts[region] else { continue }
                        // Sound: offsetInRegion < the region's page count, so the
                        // 4096 bytes lie inside its mapping, which lives as long as `memory`.
                        let page = UnsafeRawBufferPointer(start: regionBases[region] + offsetInRegion * 4096,
                                                          count: 4096)
                        if PageKind.classify(page) == .zero { continue }
                        digest &+= mix(pageIndex: UInt64(index), page: page)
                        pages += 1
                    }
                }
                chunk += workers
            }
            sums[worker] = (digest, pages)
        }

        if workers == 1 {
            work(0)
        } else {
            // Sound: each worker writes only its own element of `sums`, which
            // outlives concurrentPerform; `memory` is kept alive by this frame.
            nonisolated(unsafe) let work = work
            DispatchQueue.concurrentPerform(iterations: workers) { work($0) }
        }
        withExtendedLifetime(memory) {}

        var digest: UInt64 = 0
        var pages: UInt64 = 0
        for (partDigest, partPages) in sums {
            digest &+= partDigest
            pages += partPages
        }
        return (digest, pages)
    }
}

extension UInt64 {
    @inline(__always)
    fileprivate func rotateLeft(_ count: UInt64) -> UInt64 {
        (self << count) | (self >> (64 - count))
    }
}
