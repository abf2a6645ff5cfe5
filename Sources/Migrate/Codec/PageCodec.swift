// Page codec for the migration stream: zstd compression of page batches and
// zero-page classification. The only file in the package that imports CZstd.
// The XOR delta encoding lives in DeltaCodec.swift.

import CZstd

// MARK: - Compression

/// A reusable zstd compression context.
///
/// Frames it writes always declare their decompressed size and end with a
/// content checksum: `ZstdDecompressor` insists on both.
///
/// Not thread-safe: use one compressor per stream (per thread).
public final class ZstdCompressor {
    /// The level used when none is given: zstd's default, a good
    /// speed/ratio trade-off for page data.
    public static let defaultLevel = 3

    /// The compression levels libzstd accepts (negative levels are the fast modes).
    public static var supportedLevels: ClosedRange<Int> {
        Int(ZSTD_minCLevel())...Int(ZSTD_maxCLevel())
    }

    /// The largest frame `compress` can produce for `inputBytes` bytes of input.
    public static func maximumCompressedSize(inputBytes: Int) -> Int {
        precondition(inputBytes >= 0, "input size must not be negative")
        return ZSTD_compressBound(inputBytes)
    }

    /// The compression level this context uses.
    public let level: Int

    /// The libzstd context; owned, freed in deinit.
    private let context: OpaquePointer

    /// Creates a context compressing at `level` (see `supportedLevels`).
    /// - Throws: `CodecError.compressionLevelInvalid` for an unsupported
    ///   level, `.zstdContextAllocationFailed` if libzstd is out of memory.
    public init(level: Int = ZstdCompressor.defaultLevel) throws {
        guard Self.supportedLevels.contains(level) else {
            throw CodecError.compressionLevelInvalid(level: level, supported: Self.supportedLevels)
        }
        guard let context = ZSTD_createCCtx() else {
            throw CodecError.zstdContextAllocationFailed(what: "compression")
        }
        let settings: [(ZSTD_cParameter, Int32)] = [
            (ZSTD_c_compressionLevel, Int32(level)),
            (ZSTD_c_checksumFlag, 1),
            (ZSTD_c_contentSizeFlag, 1),
        ]
        for (parameter, value) in settings {
            let result = ZSTD_CCtx_setParameter(context, parameter, value)
            if ZSTD_isError(result) != 0 {
                let reason = String(cString: ZSTD_getErrorName(result))
                ZSTD_freeCCtx(context)
                throw CodecError.compressionFailed(inputBytes: 0, reason: "configuring the context: \(reason)")
            }
        }
        self.context = context
        self.level = level
    }

    deinit {
        ZSTD_freeCCtx(context)
    }

    /// Compresses `input` into one zstd frame.
    /// - Throws: `CodecError.compressionFailed` if libzstd fails.
    public func compress(_ input: UnsafeRawBufferPointer) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        guard ZSTD_isError(bound) == 0, bound > 0 else {
            throw CodecError.compressionFailed(inputBytes: input.count, reason: "input is too large for one frame")
        }
        return try [UInt8](unsafeUninitializedCapacity: bound) { output, initialized in
            // Sound: libzstd writes at most `output.count` bytes to `output`
            // and reads exactly `input.count` bytes from `input` (NULL only
            // when the count is 0, which libzstd accepts).
            let written = ZSTD_compress2(context, output.baseAddress, output.count,
                                         input.baseAddress, input.count)
            if ZSTD_isError(written) != 0 {
                initialized = 0
                throw CodecError.compressionFailed(
                    inputBytes: input.count, reason: String(cString: ZSTD_getErrorName(written)))
            }
            initialized = written
        }
    }

    /// Compresses `input` into one zstd frame written to `output` (reused by
    /// the caller across batches; `maximumCompressedSize(inputBytes:)` bytes
    /// always suffice). Returns the frame's length.
    /// - Throws: `CodecError.compressionFailed` if libzstd fails or the
    ///   frame does not fit in `output`.
    public func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        // Sound: libzstd writes at most `output.count` bytes to `output` and
        // reads exactly `input.count` bytes from `input` (NULL only when the
        // count is 0, which libzstd accepts).
        let written = ZSTD_compress2(context, output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(written) != 0 {
            throw CodecError.compressionFailed(
                inputBytes: input.count, reason: String(cString: ZSTD_getErrorName(written)))
        }
        return written
    }

    /// Compresses `input` into one zstd frame.
    public func compress(_ input: [UInt8]) throws -> [UInt8] {
        try input.withUnsafeBytes { try compress($0) }
    }
}

// MARK: - Decompression

/// A reusable zstd decompression context for frames received from the network.
///
/// The input is treated as hostile. Before libzstd decodes anything the frame
/// header is checked: it must be a single zstd frame (no skippable frames, no
/// trailing bytes, not truncated) that declares its decompressed size, that
/// size must fit the caller's bound, and the frame must carry a content
/// checksum (verified by libzstd while decoding). libzstd is then given an
/// output buffer of exactly the declared size, so it cannot write more.
///
/// Not thread-safe: use one decompressor per stream (per thread).
public final class ZstdDecompressor {
    /// The libzstd context; owned, freed in deinit.
    private let context: OpaquePointer

    /// - Throws: `CodecError.zstdContextAllocationFailed` if libzstd is out of memory.
    public init() throws {
        guard let context = ZSTD_createDCtx() else {
            throw CodecError.zstdContextAllocationFailed(what: "decompression")
        }
        self.context = context
    }

    deinit {
        ZSTD_freeDCtx(context)
    }

    /// What the frame check found: the declared output size and the frame's
    /// length in bytes (equal to the input length).
    private struct CheckedFrame {
        var contentSize: Int
        var frameSize: Int
    }

    /// Checks everything about the frame in `input` that can be checked
    /// without decoding it, against an output limit of `bound` bytes.
    private static func check(_ input: UnsafeRawBufferPointer, bound: Int) throws -> CheckedFrame {
        var info = pvm_zstd_frame_info()
        // Sound: the shim reads at most `input.count` bytes from `input`.
        let parsed = pvm_zstd_frame_info_parse(input.baseAddress, input.count, &info)
        switch parsed {
        case 0:
            break
        case -EMSGSIZE:
            throw CodecError.decompressTruncated(inputBytes: input.count, reason: "frame header incomplete")
        default:
            throw CodecError.decompressNotAFrame(inputBytes: input.count)
        }
        guard info.has_content_size != 0 else { throw CodecError.decompressMissingContentSize }
        guard info.content_size <= UInt64(bound) else {
            throw CodecError.decompressSizeExceedsBound(declared: info.content_size, bound: bound)
        }
        guard info.has_checksum != 0 else { throw CodecError.decompressMissingChecksum }

        // Sound: libzstd walks the block headers within `input.count` bytes.
        let frameSize = ZSTD_findFrameCompressedSize(input.baseAddress, input.count)
        if ZSTD_isError(frameSize) != 0 {
            let reason = String(cString: ZSTD_getErrorName(frameSize))
            if ZSTD_getErrorCode(frameSize) == ZSTD_error_srcSize_wrong {
                throw CodecError.decompressTruncated(inputBytes: input.count, reason: reason)
            }
            throw CodecError.decompressCorrupt(reason: reason)
        }
        guard frameSize == input.count else {
            throw CodecError.decompressTrailingBytes(frameBytes: frameSize, inputBytes: input.count)
        }
        return CheckedFrame(contentSize: Int(info.content_size), frameSize: frameSize)
    }

    /// Returns the decompressed size the frame in `input` declares, after the
    /// same checks `decompress` makes before decoding; decodes nothing.
    /// - Throws: the `CodecError.decompress…` cases.
    public static func declaredSize(of input: UnsafeRawBufferPointer, maxOutputSize: Int) throws -> Int {
        precondition(maxOutputSize >= 0, "maximum output size must not be negative")
        return try check(input, bound: maxOutputSize).contentSize
    }

    /// Decodes a checked frame into `output`, which holds at least
    /// `frame.contentSize` bytes.
    private func decode(_ input: UnsafeRawBufferPointer, _ frame: CheckedFrame,
                        into output: UnsafeMutableRawBufferPointer) throws -> Int {
        precondition(output.count >= frame.contentSize)
        // Sound: libzstd writes at most `frame.contentSize` bytes, which fit
        // in `output`, and reads `frame.frameSize` bytes, all inside `input`.
        let written = ZSTD_decompressDCtx(context, output.baseAddress, frame.contentSize,
                                          input.baseAddress, frame.frameSize)
        if ZSTD_isError(written) != 0 {
            throw CodecError.decompressCorrupt(reason: String(cString: ZSTD_getErrorName(written)))
        }
        guard written == frame.contentSize else {
            throw CodecError.decompressSizeMismatch(declared: frame.contentSize, actual: written)
        }
        return written
    }

    /// Decompresses the single frame in `input` into `output`, which bounds
    /// the output size. Returns the number of bytes written. On error the
    /// contents of `output` are unspecified.
    /// - Throws: the `CodecError.decompress…` cases.
    public func decompress(_ input: UnsafeRawBufferPointer,
                           into output: UnsafeMutableRawBufferPointer) throws -> Int {
        let frame = try Self.check(input, bound: output.count)
        return try decode(input, frame, into: output)
    }

    /// Decompresses the single frame in `input`, which may declare at most
    /// `maxOutputSize` bytes of output.
    /// - Throws: the `CodecError.decompress…` cases.
    public func decompress(_ input: UnsafeRawBufferPointer, maxOutputSize: Int) throws -> [UInt8] {
        precondition(maxOutputSize >= 0, "maximum output size must not be negative")
        let frame = try Self.check(input, bound: maxOutputSize)
        return try [UInt8](unsafeUninitializedCapacity: frame.contentSize) { output, initialized in
            initialized = 0
            initialized = try decode(input, frame, into: UnsafeMutableRawBufferPointer(output))
        }
    }

    /// Decompresses the single frame in `input`, which may declare at most
    /// `maxOutputSize` bytes of output.
    public func decompress(_ input: [UInt8], maxOutputSize: Int) throws -> [UInt8] {
        try input.withUnsafeBytes { try decompress($0, maxOutputSize: maxOutputSize) }
    }
}

// MARK: - Page classification

/// How a page travels in a batch.
public enum PageKind: Equatable, Sendable {
    /// Every byte is zero: sent as its frame number alone.
    case zero
    /// Anything else: sent raw, compressed or as a delta.
    case data

    /// Classifies `page`: `.zero` if every byte is zero (an empty buffer
    /// counts as zero), `.data` otherwise. Compares 8 bytes at a time and
    /// stops at the first non-zero word.
    public static func classify(_ page: UnsafeRawBufferPointer) -> PageKind {
        guard let base = page.baseAddress else { return .zero }
        let count = page.count
        var offset = 0
        // Sound: every load reads bytes offset..<offset+8 with offset+8 <= count;
        // loadUnaligned needs no alignment.
        while offset + 8 <= count {
            if base.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != 0 { return .data }
            offset += 8
        }
        while offset < count {
            if base.load(fromByteOffset: offset, as: UInt8.self) != 0 { return .data }
            offset += 1
        }
        return .zero
    }

    /// Classifies `page` (see `classify(_: UnsafeRawBufferPointer)`).
    public static func classify(_ page: [UInt8]) -> PageKind {
        page.withUnsafeBytes { classify($0) }
    }
}
