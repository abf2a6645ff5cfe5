import Core
import Foundation
import Testing
import TestSupport

@testable import Migrate

@Suite("frame buffer")
struct FrameBufferTests {
    /// The frame sealed in place is the §3.2 frame: the header `FrameHeader` encodes, then a
    /// payload the decoder accepts — compressed or not.
    @Test("a sealed frame is FrameHeader's header followed by a valid PAGES payload", arguments: [Int32(1), nil])
    func sealedFrameIsTheWireFrame(level: Int32?) throws {
        let source = try GuestMemory(size: 4 << 20), destination = try GuestMemory(size: 4 << 20)
        let encoder = PageBatchEncoder(maxPages: 16, compressionLevel: level, deltaCache: nil)
        let buffer = FrameBuffer(maxPages: 16, compressing: level != nil)
        encoder.begin(round: 3, into: buffer)
        for index in 0..<10 {
            let page = source.page(atIndex: index)!
            for i in stride(from: 0, to: 4096, by: 64) { page[i] = UInt8(truncatingIfNeeded: index &* 7 &+ i / 64 + 1) }
            encoder.add(pageIndex: UInt64(index), page: UnsafeRawBufferPointer(page))
        }
        let stats = encoder.finishFrame()
        let header = Array(buffer.frame.prefix(FrameHeader.size))
        #expect(header == FrameHeader(type: .pages, flags: buffer.flags, length: stats.payloadBytes).encoded())
        #expect(buffer.flags == (level == nil ? 0 : FrameHeader.flagZstd), "flags \(buffer.flags)")
        #expect(buffer.payload.count == stats.payloadBytes)
        let applied = try PageBatchDecoder().apply(flags: buffer.flags, payload: buffer.payload, to: destination,
                                                   expectedRound: 3)
        #expect(applied.raw == 10)
        for index in 0..<10 { #expect(pageBytes(destination, index) == pageBytes(source, index), "page \(index)") }
    }

    /// The whole source path of a stream, over a real TLS stream: the encoder fills one buffer
    /// while the send thread writes the other, frames go out in one write each from the buffer
    /// itself, and a reader applies them. Many versions of the same pages, mostly as DELTA
    /// against the previous version: the destination equals the source only if every frame
    /// arrived once, in order, unchanged by the refill of its buffer.
    @Test("pipelined frames over TLS arrive in order and intact", arguments: [true, false])
    func pipelinedOverTLS(threaded: Bool) throws {
        let (client, server) = try connectedPair(.tls)
        defer { client.close(); server.close() }
        let source = try GuestMemory(size: 4 << 20), destination = try GuestMemory(size: 4 << 20)
        let sending = FrameChannel(client), receiving = FrameChannel(server)
        let pipeline = SendPipeline(buffers: [FrameBuffer(maxPages: 8, compressing: true), FrameBuffer(maxPages: 8, compressing: true)],
                                    threaded: threaded, cpu: CPUMeter()) { buffer throws(MigrationError) in
            do throws(TransportError) { try sending.send(buffer) } catch { throw .transport(error) }
        }
        defer { pipeline.stop() }
        let reader = Background { () throws -> Int in
            let decoder = PageBatchDecoder()
            var pages = 0
            while true {
                switch try receiving.receive() as Frame {
                case let .pages(flags, payload):
                    pages += try decoder.apply(flags: flags, payload: payload, to: destination, expectedRound: nil).pages
                case .streamEnd: return pages
                default: throw MigrationError.cancelled
                }
            }
        }
        let encoder = PageBatchEncoder(maxPages: 8, compressionLevel: 1, deltaCache: DeltaCache(capacityBytes: 64 * 4096))
        var generator = SeededGenerator(seed: 11)
        var sent = 0, deltas = 0
        for round in 0..<30 as Range<UInt32> {
            for start in stride(from: 0, to: 24, by: 8) {
                let buffer = try pipeline.acquire()
                encoder.begin(round: round, into: buffer)
                for index in start..<(start + 8) {
                    let page = source.page(atIndex: index)!
                    page[Int.random(in: 0..<4096, using: &generator)] = UInt8.random(in: 1...255, using: &generator)
                    encoder.add(pageIndex: UInt64(index), page: UnsafeRawBufferPointer(page))
                }
                encoder.compressNext = round % 2 == 0
                let stats = encoder.finishFrame()
                sent += stats.pages
                deltas += stats.delta
                try pipeline.submit(buffer)
            }
        }
        try pipeline.drain()
        try sending.send(.streamEnd(frames: sending.framesSent))
        #expect(try reader.join(timeout: Wait.hangBound) == sent)
        #expect(deltas > 500, "most versions went as deltas against the previous one (\(deltas))")
        for index in 0..<24 {
            #expect(pageBytes(destination, index) == pageBytes(source, index), "page \(index) differs")
        }
    }
}
