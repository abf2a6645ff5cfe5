import Migrate

/// Migration frames (protocol.md §3.2), read from the input as a stream the way
/// `FrameChannel.receive` reads them: a 16-byte header, validated, then `length` payload bytes.
enum FrameTarget: FuzzTarget {
    static let name = "frame"
    static let invariant = """
        a header that validates re-encodes to the same 16 bytes and declares at most the type's limit; \
        every decoded frame except ERROR re-encodes to exactly the bytes it was decoded from; an ERROR \
        frame re-encodes to a frame that decodes, and decoding is then stable
        """

    static func run(_ input: [UInt8]) {
        var at = 0
        while input.count - at >= FrameHeader.size {
            let raw = Array(input[at..<(at + FrameHeader.size)])
            guard let header = try? FrameHeader(decoding: raw) else { return }
            check(header.encoded() == raw, "header \(raw) re-encodes as \(header.encoded())")
            check(header.length <= FrameHeader.maximumPayload, "header declares \(header.length) bytes")
            at += FrameHeader.size
            guard input.count - at >= header.length else { return }
            let payload = Array(input[at..<(at + header.length)])
            at += header.length
            guard let frame = try? Frame.decode(header, payload: payload) else { continue }
            check(frame.type == header.type, "a \(header.type.name) header decoded as \(frame.name)")
            let encoded = frame.encoded()
            if case .error = frame {
                // Unknown codes read as internalError and invalid UTF-8 is replaced: lossy by design.
                let again = decode(encoded)
                check(again != nil, "ERROR frame \(frame) re-encodes to bytes that do not decode")
                check(again.map { decode($0.encoded()) == $0 } ?? true, "ERROR frame decoding is not stable")
            } else {
                check(encoded == raw + payload, "\(frame.name) frame does not re-encode to its bytes")
            }
        }
    }

    private static func decode(_ bytes: [UInt8]) -> Frame? {
        guard bytes.count >= FrameHeader.size,
              let header = try? FrameHeader(decoding: Array(bytes[0..<FrameHeader.size])),
              header.length == bytes.count - FrameHeader.size else { return nil }
        return try? Frame.decode(header, payload: Array(bytes[FrameHeader.size...]))
    }

    static func seeds() -> [[UInt8]] {
        let id = (0..<16).map { UInt8($0 * 7) }
        let frames: [Frame] = [
            .hello(Hello(minVersion: 2, maxVersion: 2, streams: 2, capabilities: .all, migrationID: id)),
            .helloAck(HelloAck(version: 2, streams: 2, capabilities: [.zstd, .delta])),
            .machine(MachineDescription(memoryBytes: 64 << 20, vcpus: 1, inKernelIRQChip: true,
                                        kernelSHA256: [UInt8](repeating: 0xab, count: 32), name: "vm-ü")),
            .join(migrationID: id, streamIndex: 1),
            .pages(flags: 0, payload: [1, 0, 0, 0, 1, 0, 0, 0] + [UInt8](repeating: 0, count: 24)),
            .round(RoundReport(round: 3, pages: 1000, bytes: 4_096_000)),
            .state([0x50, 0x56, 0x4d, 0x53, 1, 0, 0, 0]),
            .commit(digest: 0x0123_4567_89ab_cdef, pagesWithData: 17, stateDigest: 0xfedc_ba98_7654_3210),
            .commitAck(status: 0),
            .error(ErrorReport(code: .digestMismatch, reason: "digest mismatch")),
            .streamEnd(frames: 42),
            .prepared(migrationID: id), .go(migrationID: id), .done(migrationID: id), .resolve(migrationID: id),
            .outcome(.started),
            .ping(nonce: 7), .pong(nonce: 7), .pongWork(nonce: 7, prepareMicros: 1_500, startMicros: 300),
        ]
        // Each frame alone, and one stream of all of them.
        return frames.map { $0.encoded() } + [frames.flatMap { $0.encoded() }]
    }
}
