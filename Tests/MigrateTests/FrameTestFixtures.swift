import Foundation
import Testing

@testable import Migrate

// Fixtures for FrameTests (protocol.md §3.2): decoding helpers, the golden frames and an
// in-memory ByteStream. Every golden byte array is written by hand from the spec's tables:
// header = magic 0x474d5650 little-endian (50 56 4d 47), u16 type, u16 flags,
// u32 payload length, u32 reserved (0); then the payload, little-endian.

// MARK: - Helpers

/// Frame bytes (header and payload) decoded the way a receiver does.
func decodeFrame(_ bytes: [UInt8]) throws(WireError) -> Frame {
    let header = try FrameHeader(decoding: Array(bytes[0..<FrameHeader.size]))
    return try Frame.decode(header, payload: Array(bytes[FrameHeader.size...]))
}

/// The WireError `body` throws, or nil.
func wireError(_ body: () throws -> Void) -> WireError? {
    do { try body(); return nil } catch let error as WireError { return error } catch {
        Issue.record("expected a WireError, got \(error)"); return nil
    }
}

/// The WireError from validating a 16-byte header, or nil if it is accepted.
func headerError(_ raw: [UInt8]) -> WireError? {
    wireError { _ = try FrameHeader(decoding: raw) }
}

/// The WireError from decoding `payload` under a well-formed header of `type`, or nil.
func payloadError(_ type: FrameType, _ payload: [UInt8], flags: UInt16 = 0) -> WireError? {
    wireError { _ = try Frame.decode(FrameHeader(type: type, flags: flags, length: payload.count), payload: payload) }
}

extension WireError {
    /// The case, without its associated values (for errors whose text is free-form).
    var caseName: String {
        switch self {
        case .badMagic: "badMagic"
        case .unknownType: "unknownType"
        case .badFlags: "badFlags"
        case .reservedNotZero: "reservedNotZero"
        case .tooLong: "tooLong"
        case .malformed: "malformed"
        case .unexpected: "unexpected"
        }
    }
}

/// A raw 16-byte header with every field chosen by the test (little-endian, by hand).
func rawHeader(magic: UInt32 = 0x474d_5650, type: UInt16, flags: UInt16 = 0,
                       length: UInt32, reserved: UInt32 = 0) -> [UInt8] {
    func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
    }
    return le(magic) + le(type) + le(flags) + le(length) + le(reserved)
}

/// `bytes` with `bytes[offset]` replaced.
func patched(_ bytes: [UInt8], _ offset: Int, _ value: UInt8) -> [UInt8] {
    var b = bytes
    b[offset] = value
    return b
}

// MARK: - Golden frames (hand-written from §3.2)

enum Golden {
    static let migrationID: [UInt8] = Array(0xa0...0xaf)
    static let sha: [UInt8] = Array(0x00...0x1f)

    // HELLO: min 1, max 3, streams 256, capabilities ZSTD|DELTA|PV_STATE, id a0…af.
    static let helloFrame = Frame.hello(Hello(minVersion: 1, maxVersion: 3, streams: 256,
                                              capabilities: [.zstd, .delta, .pvState], migrationID: migrationID))
    static let hello: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00,                                     // min_version 1
        0x03, 0x00,                                     // max_version 3
        0x00, 0x01, 0x00, 0x00,                         // streams 256
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // capabilities: bits 0, 1, 2
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
    ]

    // HELLO_ACK: version 1, streams 16, capabilities ZSTD|DELTA.
    static let helloAckFrame = Frame.helloAck(HelloAck(version: 1, streams: 16, capabilities: [.zstd, .delta]))
    static let helloAck: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x02, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00,                                     // version 1
        0x00, 0x00,                                     // u16 0
        0x10, 0x00, 0x00, 0x00,                         // streams 16
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // capabilities: bits 0, 1
    ]

    // MACHINE: 4.5 GiB, 4 vCPUs, in-kernel irqchip, sha 00…1f, name "vm-é" (5 UTF-8 bytes).
    static let machineFrame = Frame.machine(MachineDescription(
        memoryBytes: 0x1_2000_0000, vcpus: 4, inKernelIRQChip: true, kernelSHA256: sha, name: "vm-é"))
    static let machine: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x03, 0x00, 0x00, 0x00, 0x37, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x20, 0x01, 0x00, 0x00, 0x00, // memory_bytes 0x1_2000_0000
        0x04, 0x00, 0x00, 0x00,                         // vcpus 4
        0x01, 0x00, 0x00, 0x00,                         // flags: bit 0 in-kernel irqchip
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
        0x05, 0x00,                                     // name_length 5
        0x76, 0x6d, 0x2d, 0xc3, 0xa9,                   // "vm-é"
    ]

    // MACHINE: 64 MiB, 1 vCPU, no in-kernel irqchip, sha all ee, empty name.
    static let machineBareFrame = Frame.machine(MachineDescription(
        memoryBytes: 64 << 20, vcpus: 1, inKernelIRQChip: false,
        kernelSHA256: [UInt8](repeating: 0xee, count: 32), name: ""))
    static let machineBare: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x03, 0x00, 0x00, 0x00, 0x32, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, // memory_bytes 0x0400_0000
        0x01, 0x00, 0x00, 0x00,                         // vcpus 1
        0x00, 0x00, 0x00, 0x00,                         // flags 0
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee,
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee,
        0x00, 0x00,                                     // name_length 0
    ]

    // JOIN: id a0…af, stream index 3.
    static let joinFrame = Frame.join(migrationID: migrationID, streamIndex: 3)
    static let join: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x04, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
        0x03, 0x00, 0x00, 0x00,                         // stream_index 3
    ]

    // PAGES, no flags: a §3.3 batch of round 2 with one ZERO entry for page 5.
    static let pagesPayload: [UInt8] = [
        0x02, 0x00, 0x00, 0x00,                         // round 2
        0x01, 0x00, 0x00, 0x00,                         // count 1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // reserved
        0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // page_index 5
        0x00, 0x00, 0x00, 0x00,                         // encoding ZERO, u8 0, u16 0
        0x00, 0x00, 0x00, 0x00,                         // data_length 0
    ]
    static let pagesFrame = Frame.pages(flags: 0, payload: pagesPayload)
    static let pages: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x05, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ] + pagesPayload

    // PAGES with the ZSTD flag (bit 0): the payload is opaque at this layer.
    static let zstdPayload: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd, 0x01, 0x02, 0x03]
    static let pagesZstdFrame = Frame.pages(flags: FrameHeader.flagZstd, payload: zstdPayload)
    static let pagesZstd: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x05, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x28, 0xb5, 0x2f, 0xfd, 0x01, 0x02, 0x03,
    ]

    // ROUND: round 3, 1000 pages, 5 000 000 000 bytes.
    static let roundFrame = Frame.round(RoundReport(round: 3, pages: 1000, bytes: 5_000_000_000))
    static let round: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x06, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x03, 0x00, 0x00, 0x00,                         // round 3
        0x00, 0x00, 0x00, 0x00,                         // u32 0
        0xe8, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // pages 1000
        0x00, 0xf2, 0x05, 0x2a, 0x01, 0x00, 0x00, 0x00, // bytes 0x1_2a05_f200
    ]

    // STATE: an opaque 6-byte blob.
    static let stateFrame = Frame.state([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01])
    static let state: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x07, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xde, 0xad, 0xbe, 0xef, 0x00, 0x01,
    ]

    // COMMIT (version 2): digest 0x0123456789abcdef, 65536 pages with data, state digest 0xfedcba9876543210.
    static let commitFrame = Frame.commit(digest: 0x0123_4567_89ab_cdef, pagesWithData: 65536,
                                          stateDigest: 0xfedc_ba98_7654_3210)
    static let commit: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x08, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01, // digest
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // pages_with_data 0x10000
        0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, // state_digest
    ]

    /// The migration id 00 11 22 … ff that PREPARED, GO, DONE and RESOLVE carry below.
    static let id: [UInt8] = (0..<16).map { UInt8($0 * 0x11) }
    static let idBytes: [UInt8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]

    // PREPARED (12), GO (13), DONE (14), RESOLVE (15): the 16-byte migration id.
    static let preparedFrame = Frame.prepared(migrationID: id)
    static let prepared: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x0c, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ] + idBytes
    static let goFrame = Frame.go(migrationID: id)
    static let go: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x0d, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ] + idBytes
    static let doneFrame = Frame.done(migrationID: id)
    static let done: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x0e, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ] + idBytes
    static let resolveFrame = Frame.resolve(migrationID: id)
    static let resolve: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x0f, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ] + idBytes

    // OUTCOME (16): started (1), and unknown (0).
    static let outcomeFrame = Frame.outcome(.started)
    static let outcome: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x10, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x00,                         // outcome 1 started
        0x00, 0x00, 0x00, 0x00,                         // u32 0
    ]
    static let outcomeUnknownFrame = Frame.outcome(.unknown)
    static let outcomeUnknown: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x10, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ]

    // PING (17) and PONG (18): the nonce 0x0102030405060708.
    static let pingFrame = Frame.ping(nonce: 0x0102_0304_0506_0708)
    static let ping: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x11, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    ]
    static let pongFrame = Frame.pong(nonce: 0x0102_0304_0506_0708)
    static let pong: [UInt8] = ping.enumerated().map { $0.offset == 4 ? 0x12 : $0.element } // type 18, same nonce
    // PONG_WORK (19): the same nonce, 1,500 µs to PREPARED, 70,000 µs to DONE.
    static let pongWorkFrame = Frame.pongWork(nonce: 0x0102_0304_0506_0708, prepareMicros: 1_500, startMicros: 70_000)
    static let pongWork: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x13, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // nonce
        0xdc, 0x05, 0x00, 0x00,                         // 1,500 µs
        0x70, 0x11, 0x01, 0x00,                         // 70,000 µs
    ]

    // COMMIT_ACK: status 0 (resumed).
    static let commitAckFrame = Frame.commitAck(status: 0)
    static let commitAck: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x09, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,                         // status 0
        0x00, 0x00, 0x00, 0x00,                         // u32 0
    ]

    // COMMIT_ACK: a nonzero status 0x0102.
    static let commitAckFailedFrame = Frame.commitAck(status: 0x0102)
    static let commitAckFailed: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x09, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x02, 0x01, 0x00, 0x00,                         // status 0x0102
        0x00, 0x00, 0x00, 0x00,                         // u32 0
    ]

    // ERROR: code 4 (digest mismatch), reason "bad digest".
    static let errorFrame = Frame.error(ErrorReport(code: .digestMismatch, reason: "bad digest"))
    static let error: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x0a, 0x00, 0x00, 0x00, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x04, 0x00, 0x00, 0x00,                         // code 4
        0x00, 0x00, 0x00, 0x00,                         // u32 0
        0x62, 0x61, 0x64, 0x20, 0x64, 0x69, 0x67, 0x65, 0x73, 0x74, // "bad digest"
    ]

    // ERROR: code 6 (cancelled), empty reason.
    static let errorBareFrame = Frame.error(ErrorReport(code: .cancelled, reason: ""))
    static let errorBare: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x0a, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ]

    // STREAM_END: 66051 frames before this one.
    static let streamEndFrame = Frame.streamEnd(frames: 0x0001_0203)
    static let streamEnd: [UInt8] = [
        0x50, 0x56, 0x4d, 0x47, 0x0b, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x03, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // frames 0x10203
    ]

    /// Every golden frame with its bytes.
    static let all: [(name: String, frame: Frame, bytes: [UInt8])] = [
        ("HELLO", helloFrame, hello),
        ("HELLO_ACK", helloAckFrame, helloAck),
        ("MACHINE", machineFrame, machine),
        ("MACHINE (bare)", machineBareFrame, machineBare),
        ("JOIN", joinFrame, join),
        ("PAGES", pagesFrame, pages),
        ("PAGES (ZSTD)", pagesZstdFrame, pagesZstd),
        ("ROUND", roundFrame, round),
        ("STATE", stateFrame, state),
        ("COMMIT", commitFrame, commit),
        ("COMMIT_ACK", commitAckFrame, commitAck),
        ("COMMIT_ACK (failed)", commitAckFailedFrame, commitAckFailed),
        ("ERROR", errorFrame, error),
        ("ERROR (bare)", errorBareFrame, errorBare),
        ("STREAM_END", streamEndFrame, streamEnd),
        ("PREPARED", preparedFrame, prepared),
        ("GO", goFrame, go),
        ("DONE", doneFrame, done),
        ("RESOLVE", resolveFrame, resolve),
        ("OUTCOME", outcomeFrame, outcome),
        ("OUTCOME (unknown)", outcomeUnknownFrame, outcomeUnknown),
        ("PING", pingFrame, ping),
        ("PONG", pongFrame, pong),
        ("PONG_WORK", pongWorkFrame, pongWork),
    ]
}

// MARK: - An in-memory ByteStream

/// A one-way pipe: what is written is read back in order. `close()` is the
/// writer going away: reads drain what is buffered, then throw `.peerClosed`.
final class FrameTestPipe: ByteStream, @unchecked Sendable {
    private let condition = NSCondition()
    private var buffer: [UInt8] = []
    private var readOffset = 0
    private var closed = false
    private var timeout: Double = 5

    /// Everything ever written, in order.
    var written: [UInt8] {
        condition.lock(); defer { condition.unlock() }
        return buffer
    }

    func writeAll(_ bytes: UnsafeRawBufferPointer) throws(TransportError) {
        condition.lock(); defer { condition.unlock() }
        guard !closed else { throw .closed }
        buffer.append(contentsOf: bytes)
        condition.broadcast()
    }

    func readExactly(_ out: UnsafeMutableRawBufferPointer) throws(TransportError) {
        condition.lock(); defer { condition.unlock() }
        let deadline = timeout > 0 && timeout.isFinite ? Date(timeIntervalSinceNow: timeout) : .distantFuture
        while buffer.count - readOffset < out.count {
            if closed { throw .peerClosed }
            if !condition.wait(until: deadline) { throw .timeout }
        }
        out.copyBytes(from: buffer[readOffset..<(readOffset + out.count)])
        readOffset += out.count
    }

    func setTimeout(seconds: Double) {
        condition.lock(); defer { condition.unlock() }
        timeout = seconds
    }

    func close() {
        condition.lock(); defer { condition.unlock() }
        closed = true
        condition.broadcast()
    }

    var peer: PeerIdentity { PeerIdentity(address: "in-memory pipe") }
}

/// The MigrationError `body` throws, or nil.
func migrationError(_ body: () throws -> Void) -> MigrationError? {
    do { try body(); return nil } catch let error as MigrationError { return error } catch {
        Issue.record("expected a MigrationError, got \(error)"); return nil
    }
}

/// A PAGES frame sealed in a `FrameBuffer` with `payload` as it is (no encoder): how a
/// sending stream hands frames to `FrameChannel.send(_:)`.
func sealedFrame(flags: UInt16, payload: [UInt8]) -> FrameBuffer {
    let buffer = FrameBuffer(maxPages: PageBatchLayout.maximumCount, compressing: false)
    let area = buffer.plain
    payload.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: area[FrameHeader.size...]).copyMemory(from: $0) }
    buffer.seal(area: area, flags: flags, payloadBytes: payload.count)
    return buffer
}
