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
    /// A field holds a value out of its range or inconsistent with the rest.
    case badValue(String)

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
        case let .badValue(what): return "saved state: \(what) is not valid"
        }
    }
}

/// Writes the container of protocol.md §1.8.
struct StateWriter {
    private var writer = ByteWriter()
    private var count: UInt16 = 0
    private let countOffset: Int

    init(magic: [UInt8], version: UInt16) {
        writer.raw(magic)
        writer.u16(version)
        countOffset = writer.count
        writer.u16(0)
    }

    var bytes: [UInt8] { writer.bytes }

    mutating func section(_ tag: UInt16, _ payload: [UInt8]) {
        writer.u16(tag)
        writer.u16(0)
        writer.u32(UInt32(payload.count))
        writer.raw(payload)
        count += 1
        writer.set(count, at: countOffset)
    }
}

/// Reads the container of protocol.md §1.8 from untrusted bytes.
struct StateReader {
    /// The container's format version, one of those the caller accepts.
    let version: UInt16
    /// Sections by tag, in the order read.
    let sections: [UInt16: ArraySlice<UInt8>]

    init(_ bytes: [UInt8], magic: [UInt8], versions: ClosedRange<UInt16>, knownTags: Set<UInt16>) throws(StateCodingError) {
        var r = ByteReader(bytes)
        guard let head = r.bytes(magic.count), head == magic else {
            throw bytes.count < magic.count && bytes.starts(with: magic.prefix(bytes.count)) ? .truncated : .badMagic
        }
        guard let v = r.u16(), let n = r.u16() else { throw .truncated }
        guard versions.contains(v) else { throw .unsupportedVersion(v) }
        var sections: [UInt16: ArraySlice<UInt8>] = [:]
        for _ in 0..<n {
            guard let tag = r.u16(), let reserved = r.u16(), let length = r.u32() else { throw .truncated }
            guard reserved == 0 else { throw .reservedNotZero("section \(tag)'s header") }
            guard knownTags.contains(tag) else { throw .unknownSection(tag) }
            guard sections[tag] == nil else { throw .duplicateSection(tag) }
            let start = r.offset
            guard r.skip(Int(length)) else { throw .truncated }
            sections[tag] = bytes[start..<r.offset]
        }
        guard r.isAtEnd else { throw .trailingBytes(r.remaining) }
        self.version = v
        self.sections = sections
    }

    func required(_ tag: UInt16, _ name: String) throws(StateCodingError) -> [UInt8] {
        guard let s = sections[tag] else { throw .missingSection(name) }
        return Array(s)
    }

    /// A section holding exactly one kernel struct of type T.
    func value<T>(_ tag: UInt16, _ name: String, as: T.Type) throws(StateCodingError) -> [UInt8] {
        let b = try required(tag, name)
        try RawStruct.checkSize(b, of: T.self, name: name)
        return b
    }
}

/// Raw bytes of a plain C struct and back. Only used with KVM's kernel structs (POD).
enum RawStruct {
    static func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    /// Throws unless `bytes` is exactly one T.
    static func checkSize<T>(_ bytes: [UInt8], of: T.Type, name: String) throws(StateCodingError) {
        guard bytes.count == MemoryLayout<T>.size else {
            throw .badSectionSize(name: name, expected: MemoryLayout<T>.size, got: bytes.count)
        }
    }

    /// Sound for POD kernel structs: any bit pattern of the right size is a valid value,
    /// and callers validated `bytes.count == MemoryLayout<T>.size` (RawStruct.checkSize).
    static func value<T>(_ bytes: [UInt8], as: T.Type, zero: T) -> T {
        var v = zero
        withUnsafeMutableBytes(of: &v) { dst in
            bytes.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(dst.count))) }
        }
        return v
    }
}
