/// Everything that can go wrong encoding or decoding page data: zstd compression, the
/// XOR-delta encoding and page batches (protocol.md §3.3). Byte and format errors only; the
/// engine wraps them as `MigrationError.codec`, the wire's frame errors are `WireError`.
///
/// Cases are named by phase and operation. Each message says what failed and
/// what the user can do about it. Input that arrives from the network is
/// hostile: a malformed record is an error value, never a crash.
public enum CodecError: Error, Equatable, Sendable {
    // MARK: zstd page compression

    /// libzstd could not allocate a compression or decompression context.
    case zstdContextAllocationFailed(what: String)
    /// A compression level outside what libzstd supports was requested.
    case compressionLevelInvalid(level: Int, supported: ClosedRange<Int>)
    /// libzstd failed to compress a batch.
    case compressionFailed(inputBytes: Int, reason: String)

    /// The input is not a zstd frame (bad magic number, skippable or legacy
    /// frame, reserved bit set).
    case decompressNotAFrame(inputBytes: Int)
    /// The input ends before the frame does.
    case decompressTruncated(inputBytes: Int, reason: String)
    /// Bytes follow the single frame a batch may hold.
    case decompressTrailingBytes(frameBytes: Int, inputBytes: Int)
    /// The frame header does not declare the decompressed size.
    case decompressMissingContentSize
    /// The frame has no content checksum, so corruption could go unnoticed.
    case decompressMissingChecksum
    /// The frame declares more output than the caller allows.
    case decompressSizeExceedsBound(declared: UInt64, bound: Int)
    /// libzstd rejected the frame while decoding it (corrupt data or checksum).
    case decompressCorrupt(reason: String)
    /// The frame decoded to a different size than its header declared.
    case decompressSizeMismatch(declared: Int, actual: Int)

    // MARK: XOR-delta page encoding

    /// A delta record is malformed; `offset` is the byte in the delta where
    /// decoding stopped.
    case deltaMalformed(offset: Int, reason: String)

    // MARK: page batches (protocol.md §3.3)

    /// A PAGES payload breaks §3.3 (count, index, encoding, lengths, reserved
    /// bytes, round); nothing in guest memory was changed.
    case pageBatchMalformed(reason: String)
}

extension CodecError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .zstdContextAllocationFailed(let what):
            return "could not allocate a zstd \(what) context (out of memory); "
                + "free memory on this host or lower the number of parallel streams"
        case .compressionLevelInvalid(let level, let supported):
            return "zstd compression level \(level) is not supported; "
                + "choose a level in \(supported.lowerBound)...\(supported.upperBound)"
        case .compressionFailed(let inputBytes, let reason):
            return "zstd failed to compress a batch of \(inputBytes) bytes: \(reason); "
                + "retry without compression and report this as a bug"
        case .decompressNotAFrame(let inputBytes):
            return "received \(inputBytes) bytes that are not a zstd frame; "
                + "the peer is not speaking this protocol version or the stream is corrupt — "
                + "check that both hosts run the same pvmigrate"
        case .decompressTruncated(let inputBytes, let reason):
            return "received a zstd frame cut short after \(inputBytes) bytes (\(reason)); "
                + "the stream is corrupt or the connection dropped mid-record — retry the migration"
        case .decompressTrailingBytes(let frameBytes, let inputBytes):
            return "received \(inputBytes) bytes holding a \(frameBytes)-byte zstd frame "
                + "plus trailing data; a batch holds exactly one frame — the peer is misbehaving"
        case .decompressMissingContentSize:
            return "received a zstd frame that does not declare its decompressed size; "
                + "pvmigrate requires it to bound memory — check that both hosts run the same pvmigrate"
        case .decompressMissingChecksum:
            return "received a zstd frame without a content checksum; "
                + "pvmigrate requires it to detect corruption — check that both hosts run the same pvmigrate"
        case .decompressSizeExceedsBound(let declared, let bound):
            return "received a zstd frame declaring \(declared) bytes, more than the \(bound) allowed "
                + "for this record; the peer is misbehaving or runs an incompatible version"
        case .decompressCorrupt(let reason):
            return "received a corrupt zstd frame (\(reason)); "
                + "the stream was damaged in transit or the peer is misbehaving — retry the migration"
        case .decompressSizeMismatch(let declared, let actual):
            return "a zstd frame declared \(declared) bytes but decoded to \(actual); "
                + "the stream is corrupt — retry the migration"
        case .deltaMalformed(let offset, let reason):
            return "received a malformed page delta (at byte \(offset): \(reason)); "
                + "the stream is corrupt or the peer is misbehaving — retry the migration"
        case .pageBatchMalformed(let reason):
            return "received a malformed page batch (\(reason)); guest memory was left as it was; "
                + "the stream is corrupt or the peer is misbehaving — check that both hosts run the same pvmigrate"
        }
    }
}
