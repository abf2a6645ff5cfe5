/// The byte format of saved state (protocol.md §1.8): a 4-byte magic, a u16 format version,
/// a u16 section count, then sections `{ u16 tag, u16 reserved (0), u32 length, bytes }`.
/// Decoding treats the bytes as hostile: every length is checked, unknown or repeated
/// tags are rejected.
public enum StateCodingError: Error, Equatable, CustomStringConvertible {
    case badMagic
    case unsupportedVersion(UInt16)
    case truncated
    case unknownSection(UInt16)
    case duplicateSection(UInt16)
    case missingSection(String)
    case badSectionSize(name: String, expected: Int, got: Int)
    case trailingBytes(Int)
    /// A reserved field (a section header's, or one inside a section) holds something other than 0.
    case reservedNotZero(String)

    public var description: String {
        switch self {
        case .badMagic: return "saved state: not a pvmigrate state blob (bad magic)"
        case let .unsupportedVersion(v): return "saved state: format version \(v) is not supported"
        case .truncated: return "saved state: truncated"
        case let .unknownSection(t): return "saved state: unknown section tag \(t)"
        case let .duplicateSection(t): return "saved state: section \(t) appears twice"
        case let .missingSection(n): return "saved state: required section \(n) is missing"
        case let .badSectionSize(n, e, g): return "saved state: section \(n) is \(g) bytes, expected \(e)"
        case let .trailingBytes(n): return "saved state: \(n) unexpected bytes after the last section"
        case let .reservedNotZero(what): return "saved state: the reserved field of \(what) is not zero"
        }
    }
}

struct StateWriter {
    private(set) var bytes: [UInt8] = []
    private var count: UInt16 = 0
    private let countOffset: Int

    init(magic: [UInt8], version: UInt16) {
        bytes = magic
        StateWriter.put(&bytes, UInt64(version), 2)
        countOffset = bytes.count
        StateWriter.put(&bytes, 0, 2)
    }

    mutating func section(_ tag: UInt16, _ payload: [UInt8]) {
        StateWriter.put(&bytes, UInt64(tag), 2)
        StateWriter.put(&bytes, 0, 2)
        StateWriter.put(&bytes, UInt64(payload.count), 4)
        bytes += payload
        count += 1
        bytes[countOffset] = UInt8(count & 0xff)
        bytes[countOffset + 1] = UInt8(count >> 8)
    }

    static func put(_ b: inout [UInt8], _ v: UInt64, _ n: Int) {
        for i in 0..<n { b.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }
}

struct StateReader {
    /// Sections by tag, in the order read.
    let sections: [UInt16: ArraySlice<UInt8>]

    init(_ bytes: [UInt8], magic: [UInt8], version: UInt16, knownTags: Set<UInt16>) throws(StateCodingError) {
        guard bytes.count >= magic.count + 4, Array(bytes.prefix(magic.count)) == magic else {
            throw bytes.count < magic.count + 4 && bytes.starts(with: magic.prefix(bytes.count)) ? .truncated : .badMagic
        }
        var p = magic.count
        let v = UInt16(StateReader.le(bytes, p, 2)); p += 2
        guard v == version else { throw .unsupportedVersion(v) }
        let n = Int(StateReader.le(bytes, p, 2)); p += 2
        var sections: [UInt16: ArraySlice<UInt8>] = [:]
        for _ in 0..<n {
            guard bytes.count - p >= 8 else { throw .truncated }
            let tag = UInt16(StateReader.le(bytes, p, 2))
            let length = Int(StateReader.le(bytes, p + 4, 4))
            guard StateReader.le(bytes, p + 2, 2) == 0 else { throw .reservedNotZero("section \(tag)'s header") }
            p += 8
            guard knownTags.contains(tag) else { throw .unknownSection(tag) }
            guard sections[tag] == nil else { throw .duplicateSection(tag) }
            guard bytes.count - p >= length else { throw .truncated }
            sections[tag] = bytes[p..<(p + length)]
            p += length
        }
        guard p == bytes.count else { throw .trailingBytes(bytes.count - p) }
        self.sections = sections
    }

    func required(_ tag: UInt16, _ name: String) throws(StateCodingError) -> [UInt8] {
        guard let s = sections[tag] else { throw .missingSection(name) }
        return Array(s)
    }

    /// A section holding exactly one kernel struct of type T.
    func value<T>(_ tag: UInt16, _ name: String, as: T.Type) throws(StateCodingError) -> [UInt8] {
        let b = try required(tag, name)
        guard b.count == MemoryLayout<T>.size else {
            throw .badSectionSize(name: name, expected: MemoryLayout<T>.size, got: b.count)
        }
        return b
    }

    static func le(_ b: some Collection<UInt8>, _ at: Int, _ n: Int) -> UInt64 {
        var v: UInt64 = 0
        var i = 0
        for byte in b.dropFirst(at).prefix(n) { v |= UInt64(byte) << (8 * i); i += 1 }
        return v
    }
}

/// Raw bytes of a plain C struct and back. Only used with KVM's kernel structs (POD).
enum RawStruct {
    static func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    /// Sound for POD kernel structs: any bit pattern of the right size is a valid value,
    /// and callers validated `bytes.count == MemoryLayout<T>.size` (StateReader.value).
    static func value<T>(_ bytes: [UInt8], as: T.Type, zero: T) -> T {
        var v = zero
        withUnsafeMutableBytes(of: &v) { dst in
            bytes.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(dst.count))) }
        }
        return v
    }
}
