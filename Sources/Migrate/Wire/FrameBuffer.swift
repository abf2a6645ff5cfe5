/// Room for one PAGES frame (protocol.md §3.2, §3.3) that a `PageBatchEncoder` fills and a
/// stream sends as it lies in memory: the 16-byte frame header directly before the payload,
/// so a frame goes to the stream in one write, from this memory, with no copy into an array
/// first. Allocated once and reused for every batch (a sending stream holds two of them while
/// its encode and send stages overlap, `SendPipeline`).
///
/// Two areas, each with 16 bytes for the header in front: `plain`, where the encoder builds the
/// batch, and `packed`, where zstd writes it when that makes it smaller. `frame` is the finished
/// frame inside one of them.
///
/// `@unchecked Sendable`: it is handed between a stream's encode and send stages, and only one
/// of them uses it at a time (the hand-off's lock orders their accesses).
public final class FrameBuffer: @unchecked Sendable {
    /// The most pages a batch built here may hold.
    public let maxPages: Int
    /// Header room, then the plain batch: at most `PageBatchLayout.maximumPayload(count: maxPages)`.
    let plain: UnsafeMutableRawBufferPointer
    /// Header room, then a compressed batch (zstd's bound for the largest plain batch); empty
    /// for a buffer that never holds compressed frames.
    let packed: UnsafeMutableRawBufferPointer
    /// The finished frame (header + payload), inside `plain` or `packed`; empty until sealed.
    public private(set) var frame = UnsafeRawBufferPointer(start: nil, count: 0)
    public private(set) var flags: UInt16 = 0

    /// - Parameters:
    ///   - maxPages: 1–1024, at least the `maxPages` of the encoders that fill it.
    ///   - compressing: whether batches built here may be compressed (room for zstd's output).
    public init(maxPages: Int, compressing: Bool) {
        precondition((1...PageBatchLayout.maximumCount).contains(maxPages),
                     "a batch holds 1–\(PageBatchLayout.maximumCount) pages, not \(maxPages)")
        self.maxPages = maxPages
        let payload = PageBatchLayout.maximumPayload(count: maxPages)
        plain = .allocate(byteCount: FrameHeader.size + payload, alignment: 64)
        let bound = compressing ? ZstdCompressor.maximumCompressedSize(inputBytes: payload) : 0
        packed = .allocate(byteCount: compressing ? FrameHeader.size + bound : 0, alignment: 64)
    }

    deinit {
        plain.deallocate()
        packed.deallocate()
    }

    /// The payload of the finished frame (what follows its header).
    public var payload: UnsafeRawBufferPointer {
        frame.isEmpty ? frame : UnsafeRawBufferPointer(rebasing: frame[FrameHeader.size...])
    }

    /// Marks the buffer empty (a batch is being built in it).
    func clear() {
        frame = UnsafeRawBufferPointer(start: nil, count: 0)
        flags = 0
    }

    /// Writes the PAGES header for `payloadBytes` bytes of payload in front of them in `area`
    /// (`plain` or `packed`) and makes that the frame.
    func seal(area: UnsafeMutableRawBufferPointer, flags: UInt16, payloadBytes: Int) {
        precondition(FrameHeader.size + payloadBytes <= area.count, "a payload of \(payloadBytes) bytes overruns its area")
        // The same 16 bytes as `FrameHeader.encoded()` (§3.2), stored in place: little-endian
        // magic, type, flags, length, reserved 0. Sound: the area holds at least the header (checked above).
        area.storeBytes(of: FrameHeader.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        area.storeBytes(of: FrameType.pages.rawValue.littleEndian, toByteOffset: 4, as: UInt16.self)
        area.storeBytes(of: flags.littleEndian, toByteOffset: 6, as: UInt16.self)
        area.storeBytes(of: UInt32(payloadBytes).littleEndian, toByteOffset: 8, as: UInt32.self)
        area.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
        frame = UnsafeRawBufferPointer(rebasing: area[0..<(FrameHeader.size + payloadBytes)])
        self.flags = flags
    }
}
