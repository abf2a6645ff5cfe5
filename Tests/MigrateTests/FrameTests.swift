import Foundation
import Testing

@testable import Migrate

// Frames of the migration stream (protocol.md §3.2) and FrameChannel.
// The fixtures (helpers, golden frames, an in-memory stream) are in FrameTestFixtures.swift.

// MARK: - Tests

@Suite("frames (protocol.md §3.2)")
struct FrameTests {

    // MARK: Constants

    @Test("type numbers, flags, capability bits and error codes are the spec's")
    func constants() {
        #expect(FrameHeader.size == 16)
        #expect(FrameHeader.magic == 0x474d_5650)
        #expect(FrameHeader.maximumPayload == 16 * 1024 * 1024)
        #expect(FrameHeader.flagZstd == 1)
        let types: [(FrameType, UInt16)] = [
            (.hello, 1), (.helloAck, 2), (.machine, 3), (.join, 4), (.pages, 5), (.round, 6),
            (.state, 7), (.commit, 8), (.commitAck, 9), (.error, 10), (.streamEnd, 11),
            (.prepared, 12), (.go, 13), (.done, 14), (.resolve, 15), (.outcome, 16), (.ping, 17), (.pong, 18), (.pongWork, 19),
            (.balloon, 20),
        ]
        for (type, number) in types { #expect(type.rawValue == number, "\(type)") }
        #expect(FrameType.allCases.count == 20)
        #expect(CommitOutcome.unknown.rawValue == 0 && CommitOutcome.started.rawValue == 1 && CommitOutcome.aborted.rawValue == 2)
        #expect(Capabilities.zstd.rawValue == 1 << 0)
        #expect(Capabilities.delta.rawValue == 1 << 1)
        #expect(Capabilities.pvState.rawValue == 1 << 2)
        #expect(Capabilities.ping.rawValue == 1 << 3)
        #expect(Capabilities.commitWork.rawValue == 1 << 4)
        #expect(Capabilities.balloonMap.rawValue == 1 << 5)
        let codes: [(ErrorReport.Code, UInt32)] = [
            (.protocolViolation, 1), (.unsupportedVersion, 2), (.resources, 3), (.digestMismatch, 4),
            (.restoreFailed, 5), (.cancelled, 6), (.timeout, 7), (.internalError, 8),
        ]
        for (code, number) in codes { #expect(code.rawValue == number, "\(code)") }
        #expect(ErrorReport.reasonLimit == 4096)
    }

    @Test("the test's header builder writes the spec's layout")
    func rawHeaderBuilder() {
        #expect(rawHeader(type: 0x0102, flags: 0x0304, length: 0x0506_0708, reserved: 0x090a_0b0c) == [
            0x50, 0x56, 0x4d, 0x47, 0x02, 0x01, 0x04, 0x03, 0x08, 0x07, 0x06, 0x05, 0x0c, 0x0b, 0x0a, 0x09,
        ])
    }

    // MARK: Golden bytes

    @Test("encodes to the spec's bytes and decodes back", arguments: Golden.all.indices)
    func golden(_ i: Int) throws {
        let (name, frame, bytes) = Golden.all[i]
        #expect(frame.encoded() == bytes, "\(name)")
        let header = try FrameHeader(decoding: Array(bytes[0..<16]))
        #expect(header.type == frame.type, "\(name)")
        #expect(header.length == bytes.count - 16, "\(name)")
        let decoded = try Frame.decode(header, payload: Array(bytes[16...]))
        #expect(decoded == frame, "\(name)")
        // The header on its own encodes to the same 16 bytes.
        #expect(header.encoded() == Array(bytes[0..<16]), "\(name)")
    }

    @Test("the ZSTD flag survives the round trip in the header and the frame")
    func zstdFlag() throws {
        let header = try FrameHeader(decoding: Array(Golden.pagesZstd[0..<16]))
        #expect(header == FrameHeader(type: .pages, flags: FrameHeader.flagZstd, length: 7))
        guard case let .pages(flags, payload) = try decodeFrame(Golden.pagesZstd) else {
            Issue.record("not PAGES"); return
        }
        #expect(flags == 1)
        #expect(payload == Golden.zstdPayload)
        let plain = try FrameHeader(decoding: Array(Golden.pages[0..<16]))
        #expect(plain.flags == 0)
    }

    @Test("an ERROR frame with an unknown code decodes as internalError", arguments: [0, 9, 0x100, UInt32.max])
    func unknownErrorCode(_ code: UInt32) throws {
        let payload: [UInt8] = [
            UInt8(code & 0xff), UInt8(code >> 8 & 0xff), UInt8(code >> 16 & 0xff), UInt8(code >> 24),
            0x00, 0x00, 0x00, 0x00, 0x6f, 0x6f, 0x70, 0x73, // "oops"
        ]
        let header = try FrameHeader(decoding: rawHeader(type: 10, length: UInt32(payload.count)))
        #expect(try Frame.decode(header, payload: payload) == .error(ErrorReport(code: .internalError, reason: "oops")))
    }

    @Test("the largest frames each type allows are accepted")
    func limitsAccepted() throws {
        // MACHINE with a 255-byte name: 50 + 255 bytes.
        let name = String(repeating: "n", count: 255)
        let machine = Frame.machine(MachineDescription(memoryBytes: 1 << 20, vcpus: 1, inKernelIRQChip: false,
                                                       kernelSHA256: Golden.sha, name: name))
        let machineBytes = machine.encoded()
        #expect(machineBytes.count == 16 + 305)
        #expect(Array(machineBytes[8..<12]) == [0x31, 0x01, 0x00, 0x00])
        #expect(Array(machineBytes[64..<66]) == [0xff, 0x00])
        #expect(try decodeFrame(machineBytes) == machine)
        // ERROR with a 4096-byte reason.
        let reason = String(repeating: "r", count: 4096)
        let error = Frame.error(ErrorReport(code: .resources, reason: reason))
        let errorBytes = error.encoded()
        #expect(Array(errorBytes[8..<12]) == [0x08, 0x10, 0x00, 0x00])
        #expect(try decodeFrame(errorBytes) == error)
        // HELLO at the edges of its ranges.
        for (min, max, streams) in [(UInt16(1), UInt16(1), UInt32(1)), (2, 2, 256), (1, 0xffff, 2)] {
            let hello = Frame.hello(Hello(minVersion: min, maxVersion: max, streams: streams,
                                          capabilities: [], migrationID: Golden.migrationID))
            #expect(try decodeFrame(hello.encoded()) == hello)
        }
        // A one-byte PAGES payload.
        #expect(try decodeFrame(Frame.pages(flags: 0, payload: [0x42]).encoded()) == .pages(flags: 0, payload: [0x42]))
    }

    @Test("an over-long MACHINE name or ERROR reason is cut to a frame that decodes to a prefix")
    func overlongTextIsCut() throws {
        // ASCII: cut at the byte limit, and the result decodes.
        let longName = String(repeating: "n", count: 300)
        let machine = Frame.machine(MachineDescription(memoryBytes: 1 << 20, vcpus: 1, inKernelIRQChip: false,
                                                       kernelSHA256: Golden.sha, name: longName))
        guard case let .machine(m) = try decodeFrame(machine.encoded()) else { Issue.record("not MACHINE"); return }
        #expect(m.name == String(repeating: "n", count: 255))
        let longReason = String(repeating: "r", count: 5000)
        guard case let .error(e) = try decodeFrame(Frame.error(ErrorReport(code: .timeout, reason: longReason)).encoded()) else {
            Issue.record("not ERROR"); return
        }
        #expect(e.reason == String(repeating: "r", count: 4096))

        // Multi-byte UTF-8 across the limit: the encoders cut at a character boundary, so a
        // long name still decodes and an ERROR reason arrives as a prefix of the original.
        do {
            let name = String(repeating: "é", count: 128) // 256 bytes; 255 ends inside the 128th é
            let frame = Frame.machine(MachineDescription(memoryBytes: 1 << 20, vcpus: 1, inKernelIRQChip: false,
                                                         kernelSHA256: Golden.sha, name: name))
            guard case let .machine(m) = try decodeFrame(frame.encoded()) else { Issue.record("not MACHINE"); return }
            #expect(m.name.utf8.count <= 255 && name.hasPrefix(m.name))
        }
        do {
            let reason = "a" + String(repeating: "é", count: 2048) // 4097 bytes; 4096 ends inside the last é
            guard case let .error(e) = try decodeFrame(Frame.error(ErrorReport(code: .timeout, reason: reason)).encoded()) else {
                Issue.record("not ERROR"); return
            }
            #expect(e.reason.utf8.count <= 4096 && reason.hasPrefix(e.reason))
        }
    }

    // MARK: Header rejections

    @Test("a bad magic is rejected")
    func badMagic() {
        // "PVMH" and the magic written big-endian.
        #expect(headerError(patched(Golden.hello, 3, 0x48).prefix(16).map { $0 }) == .badMagic(0x484d_5650))
        #expect(headerError([0x47, 0x4d, 0x56, 0x50] + Array(Golden.hello[4..<16])) == .badMagic(0x5056_4d47))
        #expect(headerError([UInt8](repeating: 0, count: 16)) == .badMagic(0))
    }

    @Test("an unknown type is rejected", arguments: [UInt16(0), 21, 0x100, 0xffff])
    func unknownType(_ type: UInt16) {
        #expect(headerError(rawHeader(type: type, length: 0)) == .unknownType(type))
    }

    @Test("flags on a type other than PAGES are rejected", arguments: FrameType.allCases.filter { $0 != .pages })
    func flagsOnOtherTypes(_ type: FrameType) {
        for flags: UInt16 in [1, 2, 0x8000] {
            #expect(headerError(rawHeader(type: type.rawValue, flags: flags, length: 0))
                    == .badFlags(type: type.rawValue, flags: flags))
        }
    }

    @Test("unknown flag bits on PAGES are rejected", arguments: [UInt16(2), 3, 0x8000, 0x8001, 0xffff])
    func unknownPagesFlags(_ flags: UInt16) {
        #expect(headerError(rawHeader(type: 5, flags: flags, length: 1)) == .badFlags(type: 5, flags: flags))
    }

    @Test("a nonzero reserved header byte is rejected", arguments: 12..<16)
    func reservedHeader(_ offset: Int) {
        let raw = patched(Array(Golden.streamEnd[0..<16]), offset, 0x01)
        #expect(headerError(raw)?.caseName == "reservedNotZero")
    }

    /// Each type's payload limit: its fixed size, 50 + 255 (MACHINE), 8 + 4096 (ERROR), 16 MiB (PAGES, STATE).
    static let limits: [(FrameType, Int)] = [
        (.hello, 32), (.helloAck, 16), (.machine, 305), (.join, 20), (.pages, 16 << 20), (.round, 24),
        (.state, 16 << 20), (.commit, 24), (.commitAck, 8), (.error, 4104), (.streamEnd, 8),
        (.prepared, 16), (.go, 16), (.done, 16), (.resolve, 16), (.outcome, 8), (.ping, 8), (.pong, 8), (.pongWork, 16),
        (.balloon, 16 << 20),
    ]

    @Test("a length over the type's limit is rejected; the limit itself is accepted", arguments: limits.indices)
    func lengthLimit(_ i: Int) throws {
        let (type, limit) = Self.limits[i]
        let t = type.rawValue
        let atLimit = try FrameHeader(decoding: rawHeader(type: t, length: UInt32(limit)))
        #expect(atLimit == FrameHeader(type: type, length: limit))
        #expect(headerError(rawHeader(type: t, length: UInt32(limit + 1)))
                == .tooLong(type: t, length: limit + 1, limit: limit))
        #expect(headerError(rawHeader(type: t, length: UInt32.max))
                == .tooLong(type: t, length: Int(UInt32.max), limit: limit))
    }

    @Test("the two examples: HELLO of 33 bytes, PAGES over 16 MiB")
    func lengthExamples() {
        #expect(headerError(patched(Array(Golden.hello[0..<16]), 8, 33)) == .tooLong(type: 1, length: 33, limit: 32))
        let pages16MiBPlus1: [UInt8] = [0x50, 0x56, 0x4d, 0x47, 0x05, 0x00, 0x00, 0x00,
                                        0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]
        #expect(headerError(pages16MiBPlus1) == .tooLong(type: 5, length: (16 << 20) + 1, limit: 16 << 20))
    }

    // MARK: Payload rejections

    static let fixedSize: [(FrameType, [UInt8])] = [
        (.hello, Golden.hello), (.helloAck, Golden.helloAck), (.join, Golden.join), (.round, Golden.round),
        (.commit, Golden.commit), (.commitAck, Golden.commitAck), (.streamEnd, Golden.streamEnd),
        (.prepared, Golden.prepared), (.go, Golden.go), (.done, Golden.done), (.resolve, Golden.resolve),
        (.outcome, Golden.outcome), (.ping, Golden.ping), (.pong, Golden.pong), (.pongWork, Golden.pongWork),
    ]

    @Test("fixed-size payloads one byte short or one byte long are malformed", arguments: fixedSize.indices)
    func fixedSizeExact(_ i: Int) {
        let (type, golden) = Self.fixedSize[i]
        let payload = Array(golden[16...])
        #expect(payloadError(type, payload) == nil)
        #expect(payloadError(type, Array(payload.dropLast()))?.caseName == "malformed")
        #expect(payloadError(type, payload + [0x00])?.caseName == "malformed")
        #expect(payloadError(type, [])?.caseName == "malformed")
    }

    @Test("MACHINE and ERROR shorter than their fixed part are malformed")
    func variableShort() {
        let machine = Array(Golden.machineBare[16...])
        #expect(machine.count == 50)
        #expect(payloadError(.machine, Array(machine.dropLast()))?.caseName == "malformed")
        #expect(payloadError(.machine, [])?.caseName == "malformed")
        let error = Array(Golden.errorBare[16...])
        #expect(payloadError(.error, Array(error.dropLast()))?.caseName == "malformed")
        #expect(payloadError(.error, [])?.caseName == "malformed")
    }

    @Test("HELLO with a bad version range or stream count is malformed")
    func helloRanges() {
        let good = Array(Golden.hello[16...])
        // min_version 0 (bytes 0–1).
        #expect(payloadError(.hello, patched(good, 0, 0x00))?.caseName == "malformed")
        // min_version 4 > max_version 3.
        #expect(payloadError(.hello, patched(good, 0, 0x04))?.caseName == "malformed")
        // min_version 0x0101 > max_version 3 (high byte).
        #expect(payloadError(.hello, patched(good, 1, 0x01))?.caseName == "malformed")
        // streams 0 (bytes 4–7 = 00 00 00 00).
        #expect(payloadError(.hello, patched(good, 5, 0x00))?.caseName == "malformed")
        // streams 257 (01 01 00 00).
        #expect(payloadError(.hello, patched(good, 4, 0x01))?.caseName == "malformed")
        // streams 0x0100_0100: only the high byte is off.
        #expect(payloadError(.hello, patched(good, 7, 0x01))?.caseName == "malformed")
    }

    @Test("nonzero reserved payload bytes are rejected (HELLO_ACK, ROUND, COMMIT_ACK, ERROR)")
    func reservedPayload() {
        let cases: [(FrameType, [UInt8], Range<Int>)] = [
            (.helloAck, Array(Golden.helloAck[16...]), 2..<4),
            (.round, Array(Golden.round[16...]), 4..<8),
            (.commitAck, Array(Golden.commitAck[16...]), 4..<8),
            (.outcome, Array(Golden.outcome[16...]), 4..<8),
            (.error, Array(Golden.error[16...]), 4..<8),
        ]
        for (type, payload, reserved) in cases {
            #expect(payloadError(type, payload) == nil, "\(type)")
            for offset in reserved {
                #expect(payloadError(type, patched(payload, offset, 0x80))?.caseName == "reservedNotZero",
                        "\(type) byte \(offset)")
            }
        }
    }

    @Test("MACHINE whose name length does not match the payload is malformed")
    func machineNameLength() {
        let good = Array(Golden.machine[16...]) // name_length at 48–49, 5 name bytes follow
        #expect(payloadError(.machine, good) == nil)
        #expect(payloadError(.machine, patched(good, 48, 6))?.caseName == "malformed")   // claims more than sent
        #expect(payloadError(.machine, patched(good, 48, 4))?.caseName == "malformed")   // trailing byte
        #expect(payloadError(.machine, patched(good, 48, 0))?.caseName == "malformed")
        #expect(payloadError(.machine, patched(good, 49, 1))?.caseName == "malformed")   // 0x0105
        #expect(payloadError(.machine, good + [0x61])?.caseName == "malformed")
        #expect(payloadError(.machine, Array(good.dropLast()))?.caseName == "malformed")
    }

    @Test("MACHINE whose name is not UTF-8 is malformed",
          arguments: [[0xff], [0xc3], [0x61, 0xc3], [0xc0, 0xaf], [0xed, 0xa0, 0x80]] as [[UInt8]])
    func machineNameNotUTF8(_ name: [UInt8]) {
        let payload = Array(Golden.machineBare[16..<64]) + [UInt8(name.count), 0x00] + name
        #expect(payloadError(.machine, payload)?.caseName == "malformed")
    }

    @Test("MACHINE with an unknown flags bit is rejected", arguments: [(12, UInt8(0x04)), (12, 0x84), (13, 0x01), (15, 0x80)])
    func machineFlags(_ offset: Int, _ value: UInt8) {
        // flags are payload bytes 12–15 (after u64 memory_bytes, u32 vcpus).
        let payload = patched(Array(Golden.machine[16...]), offset, value)
        #expect(payloadError(.machine, payload)?.caseName == "reservedNotZero")
    }

    @Test("MACHINE flags bit 1 says the VM has a PV NIC (protocol.md §3.2, §5.8)")
    func machineNICFlag() throws {
        let payload = patched(Array(Golden.machine[16...]), 12, 0x03)
        let frame = try Frame.decode(FrameHeader(type: .machine, length: payload.count), payload: payload)
        guard case let .machine(m) = frame else { Issue.record("not MACHINE: \(frame)"); return }
        #expect(m.hasNIC && m.inKernelIRQChip)
        #expect(Array(frame.encoded()[16...]) == payload)
    }

    @Test("a MACHINE frame over 50 + 255 bytes is rejected by the header")
    func machineTooLong() {
        #expect(headerError(rawHeader(type: 3, length: 306)) == .tooLong(type: 3, length: 306, limit: 305))
    }

    @Test("an empty PAGES payload is malformed, with or without ZSTD")
    func emptyPages() {
        #expect(payloadError(.pages, [])?.caseName == "malformed")
        #expect(payloadError(.pages, [], flags: FrameHeader.flagZstd)?.caseName == "malformed")
    }

    // MARK: FrameChannel

    @Test("FrameChannel sends frames and PAGES, receives them back, and counts")
    func channelRoundTrip() throws {
        let pipe = FrameTestPipe()
        let sender = FrameChannel(pipe)
        try sender.send(Golden.helloFrame)
        try sender.send(Golden.machineFrame)
        try sender.send(sealedFrame(flags: 0, payload: Golden.pagesPayload))
        try sender.send(sealedFrame(flags: FrameHeader.flagZstd, payload: Golden.zstdPayload))
        try sender.send(Golden.roundFrame)
        try sender.send(Golden.streamEndFrame)
        try sender.send(Golden.stateFrame)
        try sender.send(Golden.commitFrame)
        try sender.send(Golden.errorFrame)
        // 48 + 71 + 48 + 23 + 40 + 24 + 22 + 40 (COMMIT, version 2) + 34 bytes.
        #expect(sender.framesSent == 9)
        #expect(sender.bytesSent == 350)
        #expect(sender.framesReceived == 0)
        let wire = Golden.hello + Golden.machine + Golden.pages + Golden.pagesZstd + Golden.round
            + Golden.streamEnd + Golden.state + Golden.commit + Golden.error
        #expect(pipe.written == wire)
        #expect(wire.count == 350)

        let receiver = FrameChannel(pipe)
        let expected = [Golden.helloFrame, Golden.machineFrame, Golden.pagesFrame, Golden.pagesZstdFrame,
                        Golden.roundFrame, Golden.streamEndFrame, Golden.stateFrame, Golden.commitFrame,
                        Golden.errorFrame]
        for (n, frame) in expected.enumerated() {
            #expect(try receiver.receive() == frame)
            #expect(receiver.framesReceived == UInt64(n + 1))
        }
        #expect(receiver.framesSent == 0)
        #expect(receiver.bytesSent == 0)
        // Nothing is left: the next receive waits for more, and ends when the writer closes.
        pipe.close()
        let end = migrationError { _ = try receiver.receive() }
        guard case .transport(.peerClosed)? = end else { Issue.record("expected peerClosed, got \(String(describing: end))"); return }
        #expect(receiver.framesReceived == 9)
    }

    @Test("a frame sealed in a FrameBuffer goes out as the same bytes as send(.pages)")
    func sendPagesMatchesSend() throws {
        let a = FrameTestPipe(), b = FrameTestPipe()
        try FrameChannel(a).send(sealedFrame(flags: 1, payload: Golden.zstdPayload))
        try FrameChannel(b).send(.pages(flags: 1, payload: Golden.zstdPayload))
        #expect(a.written == Golden.pagesZstd)
        #expect(b.written == Golden.pagesZstd)
    }

    @Test("a stream that ends inside a frame yields transport(.peerClosed)")
    func channelTruncated() {
        // A whole STREAM_END header, then close before its 8 payload bytes.
        let pipe = FrameTestPipe()
        Golden.streamEnd[0..<16].withUnsafeBytes { try! pipe.writeAll($0) }
        pipe.close()
        let channel = FrameChannel(pipe)
        let error = migrationError { _ = try channel.receive() }
        guard case .transport(.peerClosed)? = error else {
            Issue.record("expected transport(.peerClosed), got \(String(describing: error))"); return
        }
        #expect(channel.framesReceived == 0)

        // Half a header, then close.
        let half = FrameTestPipe()
        Golden.hello[0..<8].withUnsafeBytes { try! half.writeAll($0) }
        half.close()
        let halfError = migrationError { _ = try FrameChannel(half).receive() }
        guard case .transport(.peerClosed)? = halfError else {
            Issue.record("expected transport(.peerClosed), got \(String(describing: halfError))"); return
        }
    }

    @Test("garbage bytes yield wire(.badMagic)")
    func channelGarbage() {
        let pipe = FrameTestPipe()
        Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8).withUnsafeBytes { try! pipe.writeAll($0) }
        let channel = FrameChannel(pipe)
        let error = migrationError { _ = try channel.receive() }
        // "GET " little-endian.
        guard case .wire(.badMagic(0x2054_4547))? = error else {
            Issue.record("expected wire(.badMagic(0x20544547)), got \(String(describing: error))"); return
        }
        #expect(channel.framesReceived == 0)
    }

    @Test("a header over the limit yields wire(.tooLong) without waiting for the payload")
    func channelTooLong() {
        let pipe = FrameTestPipe()
        pipe.setTimeout(seconds: 0.2)
        // PAGES claiming 16 MiB + 1: the channel must refuse it from the header alone.
        rawHeader(type: 5, length: (16 << 20) + 1).withUnsafeBytes { try! pipe.writeAll($0) }
        let error = migrationError { _ = try FrameChannel(pipe).receive() }
        guard case .wire(.tooLong(type: 5, length: (16 << 20) + 1, limit: 16 << 20))? = error else {
            Issue.record("expected wire(.tooLong), got \(String(describing: error))"); return
        }
    }

    @Test("a malformed payload yields wire(.malformed)")
    func channelMalformed() {
        let pipe = FrameTestPipe()
        // A HELLO whose streams field is 0.
        patched(Golden.hello, 16 + 5, 0x00).withUnsafeBytes { try! pipe.writeAll($0) }
        let error = migrationError { _ = try FrameChannel(pipe).receive() }
        guard case .wire(.malformed)? = error else {
            Issue.record("expected wire(.malformed), got \(String(describing: error))"); return
        }
    }
}
