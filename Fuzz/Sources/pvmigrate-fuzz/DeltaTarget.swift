import Migrate

/// XOR deltas (protocol.md §3.3, `DELTA`) alone, so the fuzzer spends its time on the token
/// grammar. First byte even: the rest is a hostile delta against a patterned page. Odd: the rest
/// is edits `{ u16 offset, u8 length, bytes }` making a new page, which is encoded and decoded.
enum DeltaTarget: FuzzTarget {
    static let name = "delta"
    static let invariant = """
        hostile deltas: validate, apply and decode accept exactly what the reference reading of the \
        grammar accepts and produce the same page; a rejected delta leaves the page untouched; encoded \
        deltas: shorter than a page, empty exactly when nothing changed, equal from both encode \
        overloads, and decoding them gives the new page back
        """

    static let previous: [UInt8] = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }

    static func run(_ input: [UInt8]) {
        guard let mode = input.first else { return }
        if mode & 1 == 0 { hostile(Array(input.dropFirst())) } else { roundTrip(input) }
    }

    static func hostile(_ delta: [UInt8]) {
        let expected = Reference.applyDelta(delta[...], to: previous)
        let valid = delta.withUnsafeBytes { (try? DeltaCodec.validate($0, pageSize: previous.count)) != nil }
        check(valid == (expected != nil), "validate says \(valid), the reference \(expected != nil)")
        var page = previous
        let applied = delta.withUnsafeBytes { d in page.withUnsafeMutableBytes { (try? DeltaCodec.apply(d, to: $0)) != nil } }
        check(applied == valid, "apply and validate disagree")
        check(page == (expected ?? previous), "apply left a page that differs from the reference")
        check((try? DeltaCodec.decode(delta, previous: previous)) == expected, "decode differs from the reference")
    }

    static func roundTrip(_ input: [UInt8]) {
        var page = previous
        var at = 1
        while input.count - at >= 3 {
            let offset = (Int(input[at]) | Int(input[at + 1]) << 8) % page.count
            let length = min(Int(input[at + 2]), input.count - at - 3, page.count - offset)
            page.replaceSubrange(offset..<(offset + length), with: input[(at + 3)..<(at + 3 + length)])
            at += 3 + length
        }
        let delta = DeltaCodec.encode(page: page, previous: previous)
        var scratch = [UInt8](repeating: 0, count: page.count)
        let length = page.withUnsafeBytes { p in
            previous.withUnsafeBytes { q in
                scratch.withUnsafeMutableBytes { DeltaCodec.encode(page: p, previous: q, into: $0) }
            }
        }
        check(delta.map(\.count) == length, "the two encode overloads disagree on the length")
        guard let delta, let length else { return }
        check(Array(scratch[0..<length]) == delta, "the two encode overloads produced different bytes")
        check(delta.count < page.count, "a delta of \(delta.count) bytes is not smaller than the page")
        check(delta.isEmpty == (page == previous), "empty delta \(delta.isEmpty), page unchanged \(page == previous)")
        check((try? DeltaCodec.decode(delta, previous: previous)) == page, "the delta does not decode to the page")
        check(Reference.applyDelta(delta[...], to: previous) == page, "the reference does not decode the delta to the page")
    }

    static func seeds() -> [[UInt8]] {
        var page = previous
        page[10] ^= 1; page[11] ^= 2; page[3000] ^= 0xff
        let delta = DeltaCodec.encode(page: page, previous: previous) ?? []
        return [[0] + delta, [0, 0x00, 0x01, 0x00], [0, 0x80, 0x01, 0x02, 0xaa, 0xbb],
                [1, 10, 0, 3, 1, 2, 3, 0xb8, 0x0b, 1, 0xff]]
    }
}
