// PAGES payloads (protocol.md §3.3): building them on the source, checking and
// applying them on the destination.
//
// ```
// u32 round, u32 count (1–1024), u64 reserved (0)
// count × { u64 page_index, u8 encoding, u8 0, u16 0, u32 data_length }
// the entries' data, concatenated in entry order
// ```

import Core

/// How one page travels in a batch (§3.3).
public enum PageEncoding: UInt8, Sendable {
    /// All zeros: no data.
    case zero = 0
    /// The page's 4096 bytes.
    case raw = 1
    /// An XOR delta (`DeltaCodec`) against the copy last sent, 1–4095 bytes.
    case delta = 2
}

/// Per-encoding counts for one batch (or a sum of batches).
public struct BatchStats: Equatable, Sendable {
    public var zero = 0, raw = 0, delta = 0
    /// Bytes of delta data.
    public var deltaBytes = 0
    /// The payload's size before compression.
    public var uncompressedBytes = 0
    /// The payload's size on the wire (compressed when the ZSTD flag is set).
    public var payloadBytes = 0

    public init() {}

    public var pages: Int { zero + raw + delta }

    public static func += (lhs: inout BatchStats, rhs: BatchStats) {
        lhs.zero += rhs.zero
        lhs.raw += rhs.raw
        lhs.delta += rhs.delta
        lhs.deltaBytes += rhs.deltaBytes
        lhs.uncompressedBytes += rhs.uncompressedBytes
        lhs.payloadBytes += rhs.payloadBytes
    }
}

/// The numbers of §3.3.
public enum PageBatchLayout {
    public static let pageSize = 4096
    public static let headerSize = 16
    public static let entrySize = 16
    /// Pages per batch, at most.
    public static let maximumCount = 1024
    /// The largest payload a batch of `count` pages can have, and the most a
    /// compressed one may declare: `count × 4112 + 16`.
    public static func maximumPayload(count: Int) -> Int {
        count * (entrySize + pageSize) + headerSize
    }
}

// MARK: - Encoding

/// Builds one PAGES payload at a time, in a `FrameBuffer` (allocated once, reused for every
/// batch): `begin(round:into:)` + `finishFrame()` leave the whole frame, header included, ready
/// to be sent from that buffer; `begin(round:)` + `finish()` use a buffer of the encoder's own
/// and return the payload as a new array.
///
/// Pages are read from live guest memory, which the guest may be writing:
/// each page is copied once (the snapshot) and everything — the delta, the
/// raw bytes, the cache update — is derived from that copy, so the cache
/// always holds exactly what was sent.
///
/// Not thread-safe: one encoder (and one `DeltaCache`) per sending stream.
public final class PageBatchEncoder {
    /// The delta that changes nothing (skip 0, XOR one byte with 0): sent for
    /// a page that is unchanged since it was last sent, because §3.3 wants
    /// deltas of 1–4095 bytes.
    static let unchangedDelta: [UInt8] = [0x00, 0x01, 0x00]

    public let maxPages: Int
    public let deltaCache: DeltaCache?
    private let compressor: ZstdCompressor?

    /// The frame buffer of the batch being built (`begin`).
    private var target: FrameBuffer?
    /// The buffer `begin(round:)` builds in, made on first use.
    private var own: FrameBuffer?
    /// The target's plain payload area: header, table (room for `maxPages` entries), then the data area.
    private var buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    /// A delta being built (at most 4095 bytes).
    private let deltaScratch: UnsafeMutableRawBufferPointer

    private var round: UInt32 = 0
    private var started = false
    public private(set) var count = 0
    /// Bytes of data added so far (offset into the data area).
    private var dataLength = 0
    private var stats = BatchStats()

    /// The data area starts after a full table; `finish` moves it down when
    /// the batch is not full.
    private var dataStart: Int { PageBatchLayout.headerSize + maxPages * PageBatchLayout.entrySize }

    /// - Parameters:
    ///   - maxPages: pages per batch, 1–1024.
    ///   - compressionLevel: the zstd level, or nil to send batches uncompressed.
    ///     Must be in `ZstdCompressor.supportedLevels`.
    ///   - deltaCache: the cache of pages this stream sent, or nil for no deltas.
    public init(maxPages: Int = 256, compressionLevel: Int32? = 1, deltaCache: DeltaCache?) {
        precondition((1...PageBatchLayout.maximumCount).contains(maxPages),
                     "a batch holds 1–\(PageBatchLayout.maximumCount) pages, not \(maxPages)")
        self.maxPages = maxPages
        self.deltaCache = deltaCache
        if let compressionLevel {
            precondition(ZstdCompressor.supportedLevels.contains(Int(compressionLevel)),
                         "zstd level \(compressionLevel) is outside \(ZstdCompressor.supportedLevels)")
            do {
                compressor = try ZstdCompressor(level: Int(compressionLevel))
            } catch {
                // The level was checked, so only allocation can fail: out of memory.
                fatalError("\(error)")
            }
        } else {
            compressor = nil
        }
        deltaScratch = .allocate(byteCount: PageBatchLayout.pageSize, alignment: 16)
    }

    deinit {
        deltaScratch.deallocate()
    }

    /// Whether this encoder may compress: its frame buffers need room for zstd's output.
    public var compresses: Bool { compressor != nil }

    public var isFull: Bool { count == maxPages }

    /// Whether the next `finish()` compresses (when a level was given). The sender turns it
    /// off while the link is faster than compression (RoundSender's adaptive policy).
    public var compressNext = true

    /// Where each page's hash is recorded as it is encoded (§3.5: the source's incremental
    /// digest), from the same snapshot that is sent; nil records nothing.
    public var sentHashes: PageHashTable?

    /// Starts a batch of round `round` in the encoder's own buffer, discarding any unfinished one.
    public func begin(round: UInt32) {
        if own == nil { own = FrameBuffer(maxPages: maxPages, compressing: compressor != nil) }
        begin(round: round, into: own!)
    }

    /// Starts a batch of round `round` in `frame` (made for at least `maxPages` pages, and for
    /// compression if this encoder compresses), discarding any unfinished one. The encoder
    /// writes `frame` until `finishFrame()`; the caller must not send or reuse it before then.
    public func begin(round: UInt32, into frame: FrameBuffer) {
        precondition(frame.maxPages >= maxPages, "a frame buffer for \(frame.maxPages) pages cannot hold a batch of \(maxPages)")
        precondition(compressor == nil || !frame.packed.isEmpty, "a compressing encoder needs a frame buffer with room for zstd")
        frame.clear()
        target = frame
        // Sound: `plain` holds the frame header, then a payload of up to maximumPayload(maxPages).
        buffer = UnsafeMutableRawBufferPointer(rebasing: frame.plain[FrameHeader.size...])
        self.round = round
        started = true
        count = 0
        dataLength = 0
        stats = BatchStats()
    }

    /// Adds one page (4096 bytes, possibly live guest memory): ZERO if it is
    /// all zeros, else a DELTA against the cached copy when there is one and
    /// the delta is smaller than the page, else RAW. Updates the cache with
    /// what was sent. The batch must have been begun and not be full.
    /// `cache: false`: a page sent RAW is not stored (its stale entry, if any, is
    /// dropped) — for pages the round's own later stores would evict before any
    /// reuse (`RoundSender.firstCached`); a DELTA still updates its entry in place.
    @discardableResult
    public func add(pageIndex: UInt64, page: UnsafeRawBufferPointer, cache keep: Bool = true) -> PageEncoding {
        precondition(started, "begin(round:) must be called before add")
        precondition(count < maxPages, "the batch is full: finish it first")
        precondition(page.count == PageBatchLayout.pageSize, "pages are 4096 bytes, got \(page.count)")

        let encoding: PageEncoding
        var length = 0
        if PageKind.classify(page) == .zero {
            encoding = .zero
            deltaCache?.invalidate(pageIndex)  // the destination now has zeros
            sentHashes?.recordZero(Int(pageIndex))
            stats.zero += 1
        } else {
            // Sound: the data area has room for maxPages pages and count < maxPages.
            let slot = UnsafeMutableRawBufferPointer(
                rebasing: buffer[(dataStart + dataLength)..<(dataStart + dataLength + PageBatchLayout.pageSize)])
            slot.copyMemory(from: page)  // the snapshot: everything below reads this copy
            let snapshot = UnsafeRawBufferPointer(slot)
            sentHashes?.record(Int(pageIndex), snapshot)  // before a delta overwrites the snapshot
            if let cache = deltaCache, let previous = cache.lookup(pageIndex),
               let deltaLength = DeltaCodec.encode(page: snapshot, previous: previous, into: deltaScratch) {
                if deltaLength == 0 {
                    // The cached copy already equals what is sent: no store.
                    length = Self.unchangedDelta.count
                    Self.unchangedDelta.withUnsafeBytes { slot.copyMemory(from: $0) }
                } else {
                    cache.store(pageIndex, snapshot)  // before the delta overwrites the snapshot
                    length = deltaLength
                    slot.copyMemory(from: UnsafeRawBufferPointer(rebasing: deltaScratch[0..<deltaLength]))
                }
                encoding = .delta
                stats.delta += 1
                stats.deltaBytes += length
            } else {
                if keep { deltaCache?.store(pageIndex, snapshot) } else { deltaCache?.invalidate(pageIndex) }
                length = PageBatchLayout.pageSize
                encoding = .raw
                stats.raw += 1
            }
        }

        // Sound: count < maxPages, so the entry's 16 bytes lie inside the table.
        let entry = PageBatchLayout.headerSize + count * PageBatchLayout.entrySize
        buffer.storeBytes(of: pageIndex.littleEndian, toByteOffset: entry, as: UInt64.self)
        buffer.storeBytes(of: UInt32(encoding.rawValue).littleEndian, toByteOffset: entry + 8, as: UInt32.self)
        buffer.storeBytes(of: UInt32(length).littleEndian, toByteOffset: entry + 12, as: UInt32.self)
        dataLength += length
        count += 1
        return encoding
    }

    /// Ends the batch (see `finishFrame`) and returns the frame flags and a copy of the payload.
    public func finish() -> (flags: UInt16, payload: [UInt8], stats: BatchStats) {
        let stats = finishFrame()
        return (target!.flags, Array(target!.payload), stats)
    }

    /// Ends the batch (it must hold at least one page) and seals the frame in the buffer it
    /// was begun in, header first: one zstd frame with the ZSTD flag when compression is on
    /// and makes the payload smaller, else the plain payload with flags 0.
    @discardableResult
    public func finishFrame() -> BatchStats {
        precondition(started && count > 0, "a batch holds 1–\(maxPages) pages; add at least one before finish")
        let frame = target!
        started = false
        // Sound: the buffer holds at least the 16-byte header.
        buffer.storeBytes(of: round.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: UInt32(count).littleEndian, toByteOffset: 4, as: UInt32.self)
        buffer.storeBytes(of: UInt64(0), toByteOffset: 8, as: UInt64.self)
        let tableEnd = PageBatchLayout.headerSize + count * PageBatchLayout.entrySize
        if tableEnd != dataStart, dataLength > 0 {
            // Sound: both ranges lie inside `buffer`; memmove handles the overlap.
            (buffer.baseAddress! + tableEnd).copyMemory(from: buffer.baseAddress! + dataStart, byteCount: dataLength)
        }
        let total = tableEnd + dataLength
        let plain = UnsafeRawBufferPointer(rebasing: buffer[0..<total])
        stats.uncompressedBytes = total

        // Sound: `packed` is non-empty whenever there is a compressor (checked in `begin`).
        if compressNext, let compressor,
           let written = try? compressor.compress(plain, into: UnsafeMutableRawBufferPointer(rebasing: frame.packed[FrameHeader.size...])),
           written < total {
            stats.payloadBytes = written
            frame.seal(area: frame.packed, flags: FrameHeader.flagZstd, payloadBytes: written)
            return stats
        }
        // Not compressing, not smaller, or libzstd failed: the plain payload is always valid.
        stats.payloadBytes = total
        frame.seal(area: frame.plain, flags: 0, payloadBytes: total)
        return stats
    }
}

// MARK: - Decoding

/// Checks PAGES payloads against §3.3 and applies them to guest memory.
///
/// The payload is hostile. The whole batch — header, every entry, the data
/// lengths, every delta — is validated before any page is written, so a
/// malformed batch leaves guest memory exactly as it was.
///
/// Pages are written through the host mapping without `markHostWritten`: a
/// destination builds memory before its guest first runs, and the first round
/// of any later migration sends every page anyway.
///
/// Not thread-safe: one decoder per receiving stream.
public final class PageBatchDecoder {
    /// Decompression context, created with the first compressed batch.
    private var decompressor: ZstdDecompressor?
    /// Decompressed payloads go here: the most any batch may hold.
    private var plain: UnsafeMutableRawBufferPointer?

    /// Whether the ZSTD flag and DELTA entries are allowed: only when HELLO_ACK granted them.
    private let allowZstd: Bool
    private let allowDelta: Bool

    public init(allowZstd: Bool = true, allowDelta: Bool = true) {
        self.allowZstd = allowZstd
        self.allowDelta = allowDelta
    }

    deinit {
        plain?.deallocate()
    }

    /// Validates the batch in `payload` (a PAGES frame's payload, with the
    /// frame's `flags`) and applies it to `memory`. `expectedRound` nil
    /// accepts any round. Returns what the batch held.
    /// - Throws: `CodecError.pageBatchMalformed` or a `decompress…` error;
    ///   memory is then unchanged.
    public func apply(flags: UInt16, payload: UnsafeRawBufferPointer, to memory: GuestMemory,
                      expectedRound: UInt32?,
                      pageApplied: ((Int, UnsafeRawBufferPointer) -> Void)? = nil) throws(CodecError) -> BatchStats {
        guard flags & ~FrameHeader.flagZstd == 0 else {
            throw .pageBatchMalformed(reason: "unknown flag bits 0x\(String(flags, radix: 16))")
        }
        guard allowZstd || flags & FrameHeader.flagZstd == 0 else {
            throw .pageBatchMalformed(reason: "a ZSTD batch although ZSTD was not granted")
        }
        var stats = BatchStats()
        stats.payloadBytes = payload.count
        let batch: UnsafeRawBufferPointer
        if flags & FrameHeader.flagZstd != 0 {
            batch = try decompress(payload)
        } else {
            batch = payload
        }
        stats.uncompressedBytes = batch.count

        // Pass 1: check everything, reading with ByteReader (nil past the end, never a trap).
        let r = ByteReader(batch)
        guard let round = r.u32(at: 0), let rawCount = r.u32(at: 4),
              let reserved = r.u64(at: 8) else {
            throw .pageBatchMalformed(reason: "\(batch.count) bytes, shorter than the 16-byte header")
        }
        let count = Int(rawCount)
        guard (1...PageBatchLayout.maximumCount).contains(count) else {
            throw .pageBatchMalformed(reason: "page count \(count), not 1–\(PageBatchLayout.maximumCount)")
        }
        guard reserved == 0 else { throw .pageBatchMalformed(reason: "reserved header bytes are not zero") }
        if let expectedRound, round != expectedRound {
            throw .pageBatchMalformed(reason: "batch of round \(round) while receiving round \(expectedRound)")
        }
        if flags & FrameHeader.flagZstd != 0, batch.count > PageBatchLayout.maximumPayload(count: count) {
            throw .pageBatchMalformed(
                reason: "zstd frame declares \(batch.count) bytes, over \(PageBatchLayout.maximumPayload(count: count)) for \(count) pages")
        }
        let tableEnd = PageBatchLayout.headerSize + count * PageBatchLayout.entrySize
        guard batch.count >= tableEnd else {
            throw .pageBatchMalformed(reason: "table of \(count) entries cut off at \(batch.count) bytes")
        }
        let pageCount = UInt64(memory.pageCount)
        var dataOffset = tableEnd
        for i in 0..<count {
            let entry = PageBatchLayout.headerSize + i * PageBatchLayout.entrySize
            // Inside the table, whose end was checked above.
            let index = r.u64(at: entry) ?? 0
            let rawEncoding = r.u8(at: entry + 8) ?? 0
            let pad1 = r.u8(at: entry + 9) ?? 0
            let pad2 = r.u16(at: entry + 10) ?? 0
            let length = Int(r.u32(at: entry + 12) ?? 0)
            guard index < pageCount else {
                throw .pageBatchMalformed(reason: "entry \(i): page index \(index) is beyond the \(pageCount) pages of RAM")
            }
            guard pad1 == 0, pad2 == 0 else {
                throw .pageBatchMalformed(reason: "entry \(i): reserved bytes are not zero")
            }
            guard let encoding = PageEncoding(rawValue: rawEncoding) else {
                throw .pageBatchMalformed(reason: "entry \(i): unknown encoding \(rawEncoding)")
            }
            let lengthOK: Bool
            switch encoding {
            case .zero: lengthOK = length == 0
            case .raw: lengthOK = length == PageBatchLayout.pageSize
            case .delta: lengthOK = (1..<PageBatchLayout.pageSize).contains(length)
            }
            guard lengthOK else {
                throw .pageBatchMalformed(reason: "entry \(i): \(encoding) page with \(length) bytes of data")
            }
            guard batch.count - dataOffset >= length else {
                throw .pageBatchMalformed(
                    reason: "entry \(i): data runs past the end of the payload (\(batch.count) bytes)")
            }
            if encoding == .delta {
                guard allowDelta else {
                    throw .pageBatchMalformed(reason: "entry \(i) (page \(index)): a DELTA although DELTA was not granted")
                }
                do {
                    try DeltaCodec.validate(UnsafeRawBufferPointer(rebasing: batch[dataOffset..<(dataOffset + length)]),
                                            pageSize: PageBatchLayout.pageSize)
                } catch {
                    throw .pageBatchMalformed(reason: "entry \(i) (page \(index)): \(error)")
                }
            }
            dataOffset += length
        }
        guard dataOffset == batch.count else {
            throw .pageBatchMalformed(
                reason: "\(batch.count - dataOffset) bytes after the last entry's data (entries' data ends at \(dataOffset))")
        }

        // Pass 2: apply. Nothing below can fail: every check was made above,
        // so every load is inside the table and every data range inside the batch.
        dataOffset = tableEnd
        for i in 0..<count {
            let entry = PageBatchLayout.headerSize + i * PageBatchLayout.entrySize
            let index = Int(r.u64(at: entry)!)
            let encoding = PageEncoding(rawValue: r.u8(at: entry + 8)!)!
            let length = Int(r.u32(at: entry + 12)!)
            // Pass 1 checked index < pageCount, so the page exists.
            let page = memory.page(atIndex: index)!
            let data = UnsafeRawBufferPointer(rebasing: batch[dataOffset..<(dataOffset + length)])
            switch encoding {
            case .zero:
                // A page that already reads as zero (e.g. never touched) is left
                // alone, so it is not faulted in.
                if PageKind.classify(UnsafeRawBufferPointer(page)) == .data {
                    page.initializeMemory(as: UInt8.self, repeating: 0)
                }
                stats.zero += 1
            case .raw:
                page.copyMemory(from: data)
                stats.raw += 1
            case .delta:
                // Validated in pass 1, so this cannot throw.
                try? DeltaCodec.apply(data, to: page)
                stats.delta += 1
                stats.deltaBytes += length
            }
            pageApplied?(index, UnsafeRawBufferPointer(page))
            dataOffset += length
        }
        withExtendedLifetime(memory) {}
        return stats
    }

    /// Applies a batch held in an array (see the raw-buffer overload).
    public func apply(flags: UInt16, payload: [UInt8], to memory: GuestMemory,
                      expectedRound: UInt32?,
                      pageApplied: ((Int, UnsafeRawBufferPointer) -> Void)? = nil) throws(CodecError) -> BatchStats {
        let result: Result<BatchStats, CodecError> = payload.withUnsafeBytes { bytes in
            do throws(CodecError) {
                return .success(try apply(flags: flags, payload: bytes, to: memory, expectedRound: expectedRound,
                                          pageApplied: pageApplied))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Decompresses a ZSTD payload into `plain`. The count is not known until
    /// the frame is decoded, so the declared size is bounded by the largest
    /// batch, 1024 × 4112 + 16 bytes; `apply` then checks it against the count.
    private func decompress(_ payload: UnsafeRawBufferPointer) throws(CodecError) -> UnsafeRawBufferPointer {
        do {
            if decompressor == nil { decompressor = try ZstdDecompressor() }
            if plain == nil {
                plain = .allocate(byteCount: PageBatchLayout.maximumPayload(count: PageBatchLayout.maximumCount),
                                  alignment: 64)
            }
            let written = try decompressor!.decompress(payload, into: plain!)
            return UnsafeRawBufferPointer(rebasing: plain![0..<written])
        } catch let error as CodecError {
            throw error
        } catch {
            throw .decompressCorrupt(reason: "\(error)")
        }
    }
}
