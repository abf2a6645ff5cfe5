/// Frames over one ByteStream (protocol.md §3.2): encode/write and read/validate/decode.
/// One thread sends and one thread receives at a time; counts what went through.
public final class FrameChannel: @unchecked Sendable {
    public let stream: ByteStream
    public private(set) var framesSent: UInt64 = 0
    public private(set) var bytesSent: UInt64 = 0
    public private(set) var framesReceived: UInt64 = 0

    public init(_ stream: ByteStream) { self.stream = stream }

    public func send(_ frame: Frame) throws(TransportError) {
        let bytes = frame.encoded()
        try stream.write(bytes)
        framesSent += 1
        bytesSent += UInt64(bytes.count)
    }

    /// A PAGES frame sealed in `buffer` (header and payload together), in one write from the
    /// buffer itself: no copy, and over TLS no record for the header alone.
    public func send(_ buffer: FrameBuffer) throws(TransportError) {
        precondition(!buffer.frame.isEmpty, "a frame buffer is sent only after its batch is finished")
        try stream.writeAll(buffer.frame)
        framesSent += 1
        bytesSent += UInt64(buffer.frame.count)
    }

    /// The next frame, validated. A failure of the stream is handed to `transport`, a frame
    /// that breaks §3.2 to `wire`; the caller's layer decides what error they become (the
    /// wire layer knows nothing of the engine: `FrameChannel+Engine.swift` maps them to
    /// `MigrationError`). With `allowed`, a frame of another type is refused from its header,
    /// before its payload is read; `state` names the receiver's state in that error.
    public func receive<Failure: Error>(allowed: Set<FrameType>? = nil, state: String = "",
                                        transport: (TransportError) -> Failure,
                                        wire: (WireError) -> Failure) throws(Failure) -> Frame {
        let raw: [UInt8]
        do { raw = try stream.read(count: FrameHeader.size) } catch { throw transport(error) }
        let header: FrameHeader
        do { header = try FrameHeader(decoding: raw) } catch { throw wire(error) }
        if let allowed, !allowed.contains(header.type) { throw wire(.unexpected(frame: header.type.name, state: state)) }
        let payload: [UInt8]
        do { payload = try stream.read(count: header.length) } catch { throw transport(error) }
        framesReceived += 1
        do { return try Frame.decode(header, payload: payload) } catch { throw wire(error) }
    }

    /// Best effort: tell the peer why we stop. Never throws.
    public func sendError(_ code: ErrorReport.Code, _ reason: String) {
        try? send(.error(ErrorReport(code: code, reason: reason)))
    }
}

extension ByteStream {
    /// Writes all of `bytes`.
    public func write(_ bytes: [UInt8]) throws(TransportError) {
        // Typed errors cannot cross the rethrowing closure: carry them out by hand.
        var failure: TransportError?
        bytes.withUnsafeBytes { b in
            do throws(TransportError) { try writeAll(b) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Reads exactly `count` bytes, straight into the returned array (no zero-fill first: a
    /// PAGES payload is up to a batch of pages, read once per frame).
    public func read(count: Int) throws(TransportError) -> [UInt8] {
        guard count > 0 else { return [] }
        var failure: TransportError?
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            // Sound: readExactly fills all `count` bytes or throws; on a throw the array is
            // discarded, and `initialized` = 0 leaves nothing uninitialised visible.
            do throws(TransportError) {
                try readExactly(UnsafeMutableRawBufferPointer(buffer))
                initialized = count
            } catch {
                failure = error
                initialized = 0
            }
        }
        if let failure { throw failure }
        return bytes
    }
}
