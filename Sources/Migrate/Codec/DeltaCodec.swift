import Core

/// XOR-delta encoding of a page against the copy of it sent before.
///
/// A page rewritten between pre-copy rounds usually changes in a few places.
/// XOR of the new and the previous copy is zero wherever nothing changed, and
/// the delta encodes that XOR as runs:
///
/// ```
/// delta := token*
/// token := varint(zeroRun) varint(literalLength) byte[literalLength]
/// ```
///
/// Decoding starts at page offset 0: each token skips `zeroRun` unchanged
/// bytes, then XORs the next `literalLength` bytes of the page with its
/// literal. Bytes after the last token are unchanged, so an unchanged page
/// encodes as the empty delta. Varints are unsigned LEB128 (7 bits per byte,
/// low bits first, high bit set on every byte but the last).
///
/// The decoder accepts only well-formed deltas: every varint minimal and
/// complete, every literal at least 1 byte long and inside the delta, every
/// run inside the page. A delta is validated completely before a page is
/// touched, so a malformed one never leaves a page half-applied.
///
/// The encoder ends a literal at a zero run of `minimumZeroRun` bytes or more
/// (shorter zero runs cost less as literal bytes than as a new token) and
/// never emits the trailing zero run.
public enum DeltaCodec {
    /// The shortest zero run that ends a literal when encoding.
    public static let minimumZeroRun = 4

    // MARK: Encoding

    /// Encodes `page` as a delta against `previous` (the same size).
    /// Returns nil if the delta would not be smaller than the page (send the
    /// page itself then), and the empty delta if nothing changed.
    public static func encode(page: UnsafeRawBufferPointer, previous: UnsafeRawBufferPointer) -> [UInt8]? {
        precondition(page.count == previous.count,
                     "delta encoding needs pages of one size (\(page.count) vs \(previous.count))")
        guard page.count > 0 else { return nil }
        var written: Int? = nil
        let out = [UInt8](unsafeUninitializedCapacity: page.count - 1) { buffer, initialized in
            written = encode(page: page, previous: previous, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = written ?? 0
        }
        return written == nil ? nil : out
    }

    /// Encodes `page` as a delta against `previous` (the same size) into
    /// `output`, which must hold at least `page.count - 1` bytes, without
    /// allocating. Returns the delta's length (0 if nothing changed), or nil
    /// if the delta would not be smaller than the page; the bytes of `output`
    /// are then unspecified. Produces exactly the bytes `encode(page:previous:)`
    /// returns.
    public static func encode(page: UnsafeRawBufferPointer, previous: UnsafeRawBufferPointer,
                              into output: UnsafeMutableRawBufferPointer) -> Int? {
        precondition(page.count == previous.count,
                     "delta encoding needs pages of one size (\(page.count) vs \(previous.count))")
        let count = page.count
        guard count > 0, let pageBase = page.baseAddress, let previousBase = previous.baseAddress else {
            return nil
        }
        precondition(output.count >= count - 1, "delta output buffer is smaller than the page minus one byte")
        guard let outBase = output.baseAddress else { return nil }  // count == 1: no delta is smaller
        // Sound: every caller below passes an offset in 0..<count, and both
        // buffers hold `count` bytes.
        @inline(__always) func xor(_ offset: Int) -> UInt8 {
            pageBase.load(fromByteOffset: offset, as: UInt8.self)
                ^ previousBase.load(fromByteOffset: offset, as: UInt8.self)
        }
        // Sound: callers check offset + 8 <= count; no alignment needed.
        @inline(__always) func xorWord(_ offset: Int) -> UInt64 {
            pageBase.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                ^ previousBase.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
        }
        /// True when no byte of `word` is zero (the classic "has zero byte" test, negated).
        @inline(__always) func noZeroByte(_ word: UInt64) -> Bool {
            (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080 == 0
        }
        @inline(__always) func varintLength(_ value: Int) -> Int {
            var length = 1
            var rest = UInt(value) >> 7
            while rest != 0 { length += 1; rest >>= 7 }
            return length
        }
        // Sound: every write below is preceded by a check that the token fits
        // in `position + tokenLength < count <= output.count + 1`.
        @inline(__always) func putVarint(_ value: Int, at position: inout Int) {
            var rest = UInt(value)
            while rest >= 0x80 {
                outBase.storeBytes(of: UInt8(truncatingIfNeeded: rest) | 0x80, toByteOffset: position, as: UInt8.self)
                position += 1
                rest >>= 7
            }
            outBase.storeBytes(of: UInt8(rest), toByteOffset: position, as: UInt8.self)
            position += 1
        }

        var position = 0
        var cursor = 0
        while cursor < count {
            // The zero run: unchanged bytes, skipped a word at a time.
            var literalStart = cursor
            while literalStart + 8 <= count && xorWord(literalStart) == 0 { literalStart += 8 }
            while literalStart < count && xor(literalStart) == 0 { literalStart += 1 }
            if literalStart == count { break }  // the trailing zero run is implicit

            // The literal: up to a long enough zero run or the unchanged tail.
            // A token costs at least its literal plus two bytes, so give up as
            // soon as that can no longer beat the page.
            var literalEnd = literalStart
            while literalEnd < count {
                if position + 2 + (literalEnd - literalStart) >= count { return nil }
                if literalEnd + 8 <= count && noZeroByte(xorWord(literalEnd)) {
                    literalEnd += 8  // eight changed bytes: no zero run can start here
                    continue
                }
                if xor(literalEnd) != 0 {
                    literalEnd += 1
                    continue
                }
                var zeroEnd = literalEnd
                while zeroEnd < count && zeroEnd - literalEnd < minimumZeroRun && xor(zeroEnd) == 0 {
                    zeroEnd += 1
                }
                if zeroEnd - literalEnd >= minimumZeroRun || zeroEnd == count { break }
                literalEnd = zeroEnd
            }

            let literalLength = literalEnd - literalStart
            let zeroRun = literalStart - cursor
            let tokenLength = varintLength(zeroRun) + varintLength(literalLength) + literalLength
            if position + tokenLength >= count { return nil }
            putVarint(zeroRun, at: &position)
            putVarint(literalLength, at: &position)
            var offset = literalStart
            while offset + 8 <= literalEnd {
                outBase.storeBytes(of: xorWord(offset), toByteOffset: position, as: UInt64.self)
                position += 8
                offset += 8
            }
            while offset < literalEnd {
                outBase.storeBytes(of: xor(offset), toByteOffset: position, as: UInt8.self)
                position += 1
                offset += 1
            }
            cursor = literalEnd
        }
        return position
    }

    /// Encodes `page` as a delta against `previous` (see the raw-buffer overload).
    public static func encode(page: [UInt8], previous: [UInt8]) -> [UInt8]? {
        page.withUnsafeBytes { pageBytes in
            previous.withUnsafeBytes { encode(page: pageBytes, previous: $0) }
        }
    }

    // MARK: Decoding

    /// Checks that `delta` is well formed for a page of `pageSize` bytes.
    /// - Throws: `CodecError.deltaMalformed` naming the offending byte.
    public static func validate(_ delta: UnsafeRawBufferPointer, pageSize: Int) throws {
        precondition(pageSize >= 0, "page size must not be negative")
        try forEachLiteral(in: delta, pageSize: pageSize) { _, _, _ in }
    }

    /// Applies `delta` to `page`, which holds the previous copy on entry and
    /// the new one on return. The delta is validated first: if it is
    /// malformed, `page` is left untouched.
    /// - Throws: `CodecError.deltaMalformed` naming the offending byte.
    public static func apply(_ delta: UnsafeRawBufferPointer, to page: UnsafeMutableRawBufferPointer) throws {
        try validate(delta, pageSize: page.count)
        guard let deltaBase = delta.baseAddress, let pageBase = page.baseAddress else { return }
        try forEachLiteral(in: delta, pageSize: page.count) { pageOffset, deltaOffset, length in
            // Sound: forEachLiteral guarantees deltaOffset + length <= delta.count
            // and pageOffset + length <= page.count.
            var index = 0
            while index + 8 <= length {
                let old = pageBase.loadUnaligned(fromByteOffset: pageOffset + index, as: UInt64.self)
                let change = deltaBase.loadUnaligned(fromByteOffset: deltaOffset + index, as: UInt64.self)
                pageBase.storeBytes(of: old ^ change, toByteOffset: pageOffset + index, as: UInt64.self)
                index += 8
            }
            while index < length {
                let old = pageBase.load(fromByteOffset: pageOffset + index, as: UInt8.self)
                let change = deltaBase.load(fromByteOffset: deltaOffset + index, as: UInt8.self)
                pageBase.storeBytes(of: old ^ change, toByteOffset: pageOffset + index, as: UInt8.self)
                index += 1
            }
        }
    }

    /// Returns the page `delta` encodes against `previous`.
    /// - Throws: `CodecError.deltaMalformed` naming the offending byte.
    public static func decode(_ delta: [UInt8], previous: [UInt8]) throws -> [UInt8] {
        var page = previous
        try delta.withUnsafeBytes { deltaBytes in
            try page.withUnsafeMutableBytes { try apply(deltaBytes, to: $0) }
        }
        return page
    }

    // MARK: Internals

    /// Walks the tokens of `delta`, checking each, and calls `body` with
    /// (page offset, delta offset, length) for every literal. Every range
    /// passed to `body` lies inside the page and inside the delta.
    ///
    /// The delta is read through Core's `ByteReader`: its nil at the end is the
    /// bounds check (the decoder has no other), and `skip` proves a literal fits
    /// before `body` touches it.
    private static func forEachLiteral(
        in delta: UnsafeRawBufferPointer, pageSize: Int,
        _ body: (_ pageOffset: Int, _ deltaOffset: Int, _ length: Int) -> Void
    ) throws {
        var reader = ByteReader(delta)
        var pageOffset = 0
        while !reader.isAtEnd {
            let tokenStart = reader.offset
            let zeroRun = try readVarint(&reader, limit: pageSize - pageOffset,
                                         what: "zero run at page offset \(pageOffset)")
            pageOffset += zeroRun
            let length = try readVarint(&reader, limit: pageSize - pageOffset,
                                        what: "literal at page offset \(pageOffset)")
            guard length > 0 else {
                throw CodecError.deltaMalformed(offset: tokenStart, reason: "token with an empty literal")
            }
            let literal = reader.offset
            guard reader.skip(length) else {
                throw CodecError.deltaMalformed(
                    offset: literal,
                    reason: "literal of \(length) bytes but only \(reader.remaining) left in the delta")
            }
            body(pageOffset, literal, length)
            pageOffset += length
        }
    }

    /// Reads a minimal unsigned LEB128 varint, which must not exceed `limit`
    /// (the bytes left in the page).
    private static func readVarint(_ reader: inout ByteReader<UnsafeRawBufferPointer>,
                                   limit: Int, what: @autoclosure () -> String) throws -> Int {
        let start = reader.offset
        var value = 0
        var shift = 0
        while true {
            guard let byte = reader.u8() else {
                throw CodecError.deltaMalformed(offset: start, reason: "\(what()): length cut off by the end of the delta")
            }
            if byte == 0 && shift > 0 {
                throw CodecError.deltaMalformed(offset: start, reason: "\(what()): length not minimally encoded")
            }
            value |= Int(byte & 0x7f) << shift
            guard value <= limit else {
                throw CodecError.deltaMalformed(
                    offset: start, reason: "\(what()): length \(value) or more runs past the end of the page (\(limit) bytes left)")
            }
            if byte & 0x80 == 0 { return value }
            shift += 7
            guard shift <= 56 else {
                throw CodecError.deltaMalformed(offset: start, reason: "\(what()): length longer than 9 bytes")
            }
        }
    }
}
