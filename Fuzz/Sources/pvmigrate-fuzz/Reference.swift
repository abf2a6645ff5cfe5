// An independent, deliberately plain reading of protocol.md §3.3 (page batches and XOR
// deltas), written from the spec and not from Migrate's decoders. The page-batch and delta
// targets compare it with the real decoders: both must accept exactly the same inputs and
// produce the same pages.

enum Reference {
    static let pageSize = 4096

    /// Reads a minimal LEB128 varint at `at`; nil if cut off, not minimal or above `limit`.
    static func varint(_ b: ArraySlice<UInt8>, _ at: inout Int, limit: Int) -> Int? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        var length = 0
        while true {
            guard at < b.endIndex, shift < 64 else { return nil }
            let byte = b[at]
            at += 1
            length += 1
            let part = UInt64(byte & 0x7f)
            guard shift == 0 || part >> (64 - shift) == 0 else { return nil }  // bits beyond 64: too long
            value |= part << shift
            if byte & 0x80 == 0 {
                if length > 1 && byte == 0 { return nil }  // a last byte of 0 adds nothing: not minimal
                return value <= UInt64(limit) ? Int(value) : nil
            }
            if value > UInt64(limit) { return nil }  // later bytes only add
            shift += 7
        }
    }

    /// Applies `delta` to `page`, or returns nil (leaving `page` alone) if it is malformed.
    static func applyDelta(_ delta: ArraySlice<UInt8>, to page: [UInt8]) -> [UInt8]? {
        var out = page
        var at = delta.startIndex
        var offset = 0
        while at < delta.endIndex {
            guard let run = varint(delta, &at, limit: page.count - offset) else { return nil }
            offset += run
            guard let length = varint(delta, &at, limit: page.count - offset), length > 0,
                  delta.endIndex - at >= length else { return nil }
            for k in 0..<length { out[offset + k] ^= delta[at + k] }
            at += length
            offset += length
        }
        return out
    }

    struct Entry {
        var index: Int
        var encoding: UInt8
        var data: ArraySlice<UInt8>
    }

    /// The entries of a plain (decompressed) batch, or nil if §3.3 rejects it.
    /// `compressed`: the payload came in a zstd frame (the size rule for `count`).
    static func batch(_ b: [UInt8], pageCount: Int, compressed: Bool) -> [Entry]? {
        func le(_ at: Int, _ n: Int) -> UInt64 {
            (0..<n).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
        }
        guard b.count >= 16 else { return nil }
        let count = Int(le(4, 4))
        guard (1...1024).contains(count), le(8, 8) == 0 else { return nil }
        if compressed, b.count > count * 4112 + 16 { return nil }
        var data = 16 + 16 * count
        guard b.count >= data else { return nil }
        var entries: [Entry] = []
        for i in 0..<count {
            let e = 16 + 16 * i
            let index = le(e, 8), encoding = b[e + 8], length = Int(le(e + 12, 4))
            guard index < UInt64(pageCount), b[e + 9] == 0, le(e + 10, 2) == 0 else { return nil }
            switch encoding {
            case 0: guard length == 0 else { return nil }
            case 1: guard length == pageSize else { return nil }
            case 2: guard length >= 1, length < pageSize else { return nil }
            default: return nil
            }
            guard b.count - data >= length else { return nil }
            let bytes = b[data..<(data + length)]
            if encoding == 2, applyDelta(bytes, to: [UInt8](repeating: 0, count: pageSize)) == nil { return nil }
            entries.append(Entry(index: Int(index), encoding: encoding, data: bytes))
            data += length
        }
        return data == b.count ? entries : nil
    }

    /// `page` after `entry` (which `batch` accepted).
    static func apply(_ entry: Entry, to page: [UInt8]) -> [UInt8] {
        switch entry.encoding {
        case 0: return [UInt8](repeating: 0, count: pageSize)
        case 1: return Array(entry.data)
        default: return applyDelta(entry.data, to: page)!
        }
    }
}
