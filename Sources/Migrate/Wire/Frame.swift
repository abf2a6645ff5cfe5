import Core

/// Frames of the migration stream (protocol.md §3.2): a 16-byte header, then the payload.
/// Every decoder validates lengths and contents exactly; the network is hostile.

public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    case badMagic(UInt32)
    case unknownType(UInt16)
    case badFlags(type: UInt16, flags: UInt16)
    case reservedNotZero(String)
    case tooLong(type: UInt16, length: Int, limit: Int)
    case malformed(type: String, reason: String)
    /// A frame that is valid but not allowed in the receiver's current state (§3.4).
    case unexpected(frame: String, state: String)

    public var description: String {
        let hint = "the peer is not pvmigrate, runs an incompatible version, or the stream is corrupt"
        switch self {
        case let .badMagic(m): return "received a frame with bad magic 0x\(String(m, radix: 16)): \(hint)"
        case let .unknownType(t): return "received a frame of unknown type \(t): \(hint)"
        case let .badFlags(t, f): return "received frame type \(t) with unknown flags 0x\(String(f, radix: 16)): \(hint)"
        case let .reservedNotZero(what): return "received a frame whose reserved field \(what) is not zero: \(hint)"
        case let .tooLong(t, n, limit): return "received frame type \(t) of \(n) bytes, over its limit of \(limit): \(hint)"
        case let .malformed(t, why): return "received a malformed \(t) frame (\(why)): \(hint)"
        case let .unexpected(f, s): return "received \(f) while \(s): protocol violation by the peer"
        }
    }
}

public enum FrameType: UInt16, Sendable, CaseIterable {
    case hello = 1, helloAck, machine, join, pages, round, state, commit, commitAck, error, streamEnd
    // Protocol version 2: the commit protocol (protocol.md §3.6) and its resolution.
    case prepared, go, done, resolve, outcome
    // Capability PING (protocol.md §3.2): the commit round trip, re-measured during pre-copy.
    case ping, pong
    // Capability COMMIT_WORK (protocol.md §3.2): PONG with the destination's commit work.
    case pongWork
    // Capability BALLOON_MAP (protocol.md §3.2.1): the balloon map, sent ahead of the pause.
    case balloon

    /// The protocol's name for the type (protocol.md §3.2), e.g. HELLO_ACK.
    public var name: String {
        switch self {
        case .helloAck: "HELLO_ACK"
        case .commitAck: "COMMIT_ACK"
        case .streamEnd: "STREAM_END"
        case .pongWork: "PONG_WORK"
        default: "\(self)".uppercased()
        }
    }

    /// The largest payload this type may carry.
    var payloadLimit: Int {
        switch self {
        case .hello: 32
        case .helloAck: 16
        case .machine: 50 + 255
        case .join: 20
        case .pages, .state: FrameHeader.maximumPayload
        case .round: 24
        case .commit: 24
        case .commitAck: 8
        case .prepared, .go, .done, .resolve: 16
        case .outcome: 8
        case .ping, .pong: 8
        case .pongWork: 16
        case .balloon: FrameHeader.maximumPayload
        case .error: 8 + ErrorReport.reasonLimit
        case .streamEnd: 8
        }
    }
}

public struct FrameHeader: Equatable, Sendable {
    public static let size = 16
    public static let magic: UInt32 = 0x474d_5650 // "PVMG"
    public static let maximumPayload = 16 << 20
    public static let flagZstd: UInt16 = 1

    public var type: FrameType
    public var flags: UInt16
    public var length: Int

    public init(type: FrameType, flags: UInt16 = 0, length: Int) {
        self.type = type; self.flags = flags; self.length = length
    }

    public func encoded() -> [UInt8] {
        var b = ByteWriter(capacity: Self.size)
        b.u32(Self.magic); b.u16(type.rawValue); b.u16(flags); b.u32(UInt32(length)); b.u32(0)
        return b.bytes
    }

    /// Validates a received header (magic, type, flags, reserved, length limits).
    public init(decoding raw: [UInt8]) throws(WireError) {
        precondition(raw.count == Self.size)
        var r = PayloadReader(raw, type: "header")
        let magic = try r.u32(), typeRaw = try r.u16(), flags = try r.u16(), length = Int(try r.u32()), reserved = try r.u32()
        guard magic == Self.magic else { throw .badMagic(magic) }
        guard let type = FrameType(rawValue: typeRaw) else { throw .unknownType(typeRaw) }
        let allowed: UInt16 = type == .pages ? Self.flagZstd : 0
        guard flags & ~allowed == 0 else { throw .badFlags(type: typeRaw, flags: flags) }
        guard reserved == 0 else { throw .reservedNotZero("header") }
        guard length <= type.payloadLimit else { throw .tooLong(type: typeRaw, length: length, limit: type.payloadLimit) }
        self.type = type; self.flags = flags; self.length = length
    }
}

public struct Capabilities: OptionSet, Sendable, Equatable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let zstd = Capabilities(rawValue: 1 << 0)
    public static let delta = Capabilities(rawValue: 1 << 1)
    public static let pvState = Capabilities(rawValue: 1 << 2)
    /// PING / PONG on the control stream during pre-copy (protocol.md §3.2).
    public static let ping = Capabilities(rawValue: 1 << 3)
    /// PING is answered with PONG_WORK: the destination's estimate of its own commit work.
    public static let commitWork = Capabilities(rawValue: 1 << 4)
    /// The balloon map travels in BALLOON frames, not in STATE (protocol.md §3.2.1); only
    /// with `pvState`.
    public static let balloonMap = Capabilities(rawValue: 1 << 5)
    public static let all: Capabilities = [.zstd, .delta, .pvState, .ping, .commitWork, .balloonMap]
}

public struct Hello: Equatable, Sendable {
    public var minVersion: UInt16 = 1, maxVersion: UInt16 = 1
    public var streams: UInt32
    public var capabilities: Capabilities
    public var migrationID: [UInt8] // 16 bytes

    public init(minVersion: UInt16 = 1, maxVersion: UInt16 = 1, streams: UInt32, capabilities: Capabilities, migrationID: [UInt8]) {
        self.minVersion = minVersion; self.maxVersion = maxVersion; self.streams = streams
        self.capabilities = capabilities; self.migrationID = migrationID
    }
}

public struct HelloAck: Equatable, Sendable {
    public var version: UInt16
    public var streams: UInt32
    public var capabilities: Capabilities

    public init(version: UInt16, streams: UInt32, capabilities: Capabilities) {
        self.version = version; self.streams = streams; self.capabilities = capabilities
    }
}

public struct MachineDescription: Equatable, Sendable {
    public var memoryBytes: UInt64
    public var vcpus: UInt32
    public var inKernelIRQChip: Bool
    /// Flags bit 1: the VM has a PV network device (protocol.md §5.8); STATE then holds its
    /// `net` section and the destination must give it a network.
    public var hasNIC: Bool
    public var kernelSHA256: [UInt8] // 32 bytes
    public var name: String

    public init(memoryBytes: UInt64, vcpus: UInt32, inKernelIRQChip: Bool, hasNIC: Bool = false, kernelSHA256: [UInt8],
                name: String) {
        self.memoryBytes = memoryBytes; self.vcpus = vcpus; self.inKernelIRQChip = inKernelIRQChip; self.hasNIC = hasNIC
        self.kernelSHA256 = kernelSHA256; self.name = name
    }

    var flags: UInt32 { (inKernelIRQChip ? 1 : 0) | (hasNIC ? 2 : 0) }
}

public struct RoundReport: Equatable, Sendable {
    public var round: UInt32
    public var pages: UInt64
    public var bytes: UInt64

    public init(round: UInt32, pages: UInt64, bytes: UInt64) { self.round = round; self.pages = pages; self.bytes = bytes }
}

/// What a destination decided about a migration (protocol.md §3.6), as OUTCOME reports it.
public enum CommitOutcome: UInt32, Sendable, Equatable, CustomStringConvertible {
    /// No record: the destination never started this migration's guest (safe to resume).
    case unknown = 0
    /// The destination started the guest: it runs there.
    case started = 1
    /// The destination discarded the VM: it never ran there.
    case aborted = 2

    public var description: String {
        switch self {
        case .unknown: "unknown"
        case .started: "started"
        case .aborted: "aborted"
        }
    }
}

public struct ErrorReport: Equatable, Sendable, Error {
    public static let reasonLimit = 4096
    public enum Code: UInt32, Sendable {
        case protocolViolation = 1, unsupportedVersion, resources, digestMismatch, restoreFailed, cancelled, timeout, internalError
    }
    public var code: Code
    public var reason: String

    public init(code: Code, reason: String) { self.code = code; self.reason = reason }
}

/// One frame, decoded.
public enum Frame: Equatable, Sendable {
    case hello(Hello)
    case helloAck(HelloAck)
    case machine(MachineDescription)
    case join(migrationID: [UInt8], streamIndex: UInt32)
    case pages(flags: UInt16, payload: [UInt8])
    case round(RoundReport)
    case state([UInt8])
    case commit(digest: UInt64, pagesWithData: UInt64, stateDigest: UInt64)
    case commitAck(status: UInt32)
    case error(ErrorReport)
    case streamEnd(frames: UInt64)
    case prepared(migrationID: [UInt8])
    case go(migrationID: [UInt8])
    case done(migrationID: [UInt8])
    case resolve(migrationID: [UInt8])
    case outcome(CommitOutcome)
    case ping(nonce: UInt64)
    case pong(nonce: UInt64)
    /// PONG with the destination's estimate of its own work in the commit, in µs: from COMMIT
    /// read to PREPARED sent, and from GO read to DONE sent (protocol.md §3.2).
    case pongWork(nonce: UInt64, prepareMicros: UInt32, startMicros: UInt32)
    /// Changes to the balloon map the destination holds (protocol.md §3.2.1).
    case balloon(BalloonUpdate)

    public var type: FrameType {
        switch self {
        case .hello: .hello
        case .helloAck: .helloAck
        case .machine: .machine
        case .join: .join
        case .pages: .pages
        case .round: .round
        case .state: .state
        case .commit: .commit
        case .commitAck: .commitAck
        case .error: .error
        case .streamEnd: .streamEnd
        case .prepared: .prepared
        case .go: .go
        case .done: .done
        case .resolve: .resolve
        case .outcome: .outcome
        case .ping: .ping
        case .pong: .pong
        case .pongWork: .pongWork
        case .balloon: .balloon
        }
    }

    public var name: String { type.name }

    /// Header and payload, ready to write.
    public func encoded() -> [UInt8] {
        var p = ByteWriter()
        var flags: UInt16 = 0
        switch self {
        case let .hello(h):
            p.u16(h.minVersion); p.u16(h.maxVersion); p.u32(h.streams); p.u64(h.capabilities.rawValue); p.raw(h.migrationID)
        case let .helloAck(a):
            p.u16(a.version); p.u16(0); p.u32(a.streams); p.u64(a.capabilities.rawValue)
        case let .machine(m):
            let name = utf8Prefix(m.name, 255)
            p.u64(m.memoryBytes); p.u32(m.vcpus); p.u32(m.flags); p.raw(m.kernelSHA256)
            p.u16(UInt16(name.count)); p.raw(name)
        case let .join(id, index):
            p.raw(id); p.u32(index)
        case let .pages(f, payload):
            flags = f; p.raw(payload)
        case let .round(r):
            p.u32(r.round); p.u32(0); p.u64(r.pages); p.u64(r.bytes)
        case let .state(blob):
            p.raw(blob)
        case let .commit(digest, pages, stateDigest):
            p.u64(digest); p.u64(pages); p.u64(stateDigest)
        case let .commitAck(status):
            p.u32(status); p.u32(0)
        case let .error(e):
            p.u32(e.code.rawValue); p.u32(0); p.raw(utf8Prefix(e.reason, ErrorReport.reasonLimit))
        case let .streamEnd(n):
            p.u64(n)
        case let .prepared(id), let .go(id), let .done(id), let .resolve(id):
            p.raw(id)
        case let .outcome(o):
            p.u32(o.rawValue); p.u32(0)
        case let .ping(nonce), let .pong(nonce):
            p.u64(nonce)
        case let .pongWork(nonce, prepare, start):
            p.u64(nonce); p.u32(prepare); p.u32(start)
        case let .balloon(update):
            p.raw(update.encoded())
        }
        return FrameHeader(type: type, flags: flags, length: p.bytes.count).encoded() + p.bytes
    }

    /// Decodes a payload whose header was already validated. Exact: no short or trailing bytes.
    public static func decode(_ header: FrameHeader, payload: [UInt8]) throws(WireError) -> Frame {
        let name = header.type.name
        func exact(_ n: Int) throws(WireError) {
            guard payload.count == n else { throw .malformed(type: name, reason: "\(payload.count) bytes, expected \(n)") }
        }
        var r = PayloadReader(payload, type: name)
        switch header.type {
        case .hello:
            try exact(32)
            let h = Hello(minVersion: try r.u16(), maxVersion: try r.u16(), streams: try r.u32(),
                          capabilities: Capabilities(rawValue: try r.u64()), migrationID: try r.raw(16))
            guard h.minVersion >= 1, h.minVersion <= h.maxVersion else { throw .malformed(type: name, reason: "version range \(h.minVersion)–\(h.maxVersion)") }
            guard (1...256).contains(h.streams) else { throw .malformed(type: name, reason: "\(h.streams) streams") }
            return .hello(h)
        case .helloAck:
            try exact(16)
            let version = try r.u16()
            guard try r.u16() == 0 else { throw .reservedNotZero("HELLO_ACK") }
            return .helloAck(HelloAck(version: version, streams: try r.u32(), capabilities: Capabilities(rawValue: try r.u64())))
        case .machine:
            guard payload.count >= 50 else { throw .malformed(type: name, reason: "\(payload.count) bytes") }
            let memory = try r.u64(), vcpus = try r.u32(), flags = try r.u32(), sha = try r.raw(32), nameLength = Int(try r.u16())
            try exact(50 + nameLength)
            guard flags & ~3 == 0 else { throw .reservedNotZero("MACHINE flags") }
            guard let text = String(validating: try r.raw(nameLength), as: UTF8.self) else {
                throw .malformed(type: name, reason: "the VM name is not UTF-8")
            }
            return .machine(MachineDescription(memoryBytes: memory, vcpus: vcpus, inKernelIRQChip: flags & 1 != 0, hasNIC: flags & 2 != 0,
                                               kernelSHA256: sha, name: text))
        case .join:
            try exact(20)
            return .join(migrationID: try r.raw(16), streamIndex: try r.u32())
        case .pages:
            guard !payload.isEmpty else { throw .malformed(type: name, reason: "empty") }
            return .pages(flags: header.flags, payload: payload)
        case .round:
            try exact(24)
            let round = try r.u32()
            guard try r.u32() == 0 else { throw .reservedNotZero("ROUND") }
            return .round(RoundReport(round: round, pages: try r.u64(), bytes: try r.u64()))
        case .state:
            return .state(payload)
        case .commit:
            try exact(24)
            return .commit(digest: try r.u64(), pagesWithData: try r.u64(), stateDigest: try r.u64())
        case .commitAck:
            try exact(8)
            let status = try r.u32()
            guard try r.u32() == 0 else { throw .reservedNotZero("COMMIT_ACK") }
            return .commitAck(status: status)
        case .error:
            guard payload.count >= 8 else { throw .malformed(type: name, reason: "\(payload.count) bytes") }
            let raw = try r.u32()
            guard try r.u32() == 0 else { throw .reservedNotZero("ERROR") }
            let code = ErrorReport.Code(rawValue: raw) ?? .internalError
            let reason = String(decoding: payload[8...], as: UTF8.self)
            return .error(ErrorReport(code: code, reason: reason))
        case .streamEnd:
            try exact(8)
            return .streamEnd(frames: try r.u64())
        case .prepared, .go, .done, .resolve:
            try exact(16)
            let id = try r.raw(16)
            switch header.type {
            case .prepared: return .prepared(migrationID: id)
            case .go: return .go(migrationID: id)
            case .done: return .done(migrationID: id)
            default: return .resolve(migrationID: id)
            }
        case .outcome:
            try exact(8)
            let raw = try r.u32()
            guard try r.u32() == 0 else { throw .reservedNotZero("OUTCOME") }
            guard let o = CommitOutcome(rawValue: raw) else { throw .malformed(type: name, reason: "outcome \(raw)") }
            return .outcome(o)
        case .ping, .pong:
            try exact(8)
            let nonce = try r.u64()
            return header.type == .ping ? .ping(nonce: nonce) : .pong(nonce: nonce)
        case .pongWork:
            try exact(16)
            return .pongWork(nonce: try r.u64(), prepareMicros: try r.u32(), startMicros: try r.u32())
        case .balloon:
            return .balloon(try BalloonUpdate(decoding: payload))
        }
    }
}

/// The longest prefix of `s` whose UTF-8 fits `limit` bytes, cut between characters.
func utf8Prefix(_ s: String, _ limit: Int) -> [UInt8] {
    var out: [UInt8] = []
    for ch in s {
        let bytes = Array(String(ch).utf8)
        if out.count + bytes.count > limit { break }
        out += bytes
    }
    return out
}

/// Reads of a frame's bytes over `ByteReader`: a read past the end is a malformed frame
/// (the callers check the size first, so this is defence in depth), never a trap.
struct PayloadReader {
    private var reader: ByteReader<[UInt8]>
    private let type: String

    init(_ bytes: [UInt8], type: String) { reader = ByteReader(bytes); self.type = type }

    mutating func u16() throws(WireError) -> UInt16 { try need(reader.u16()) }
    mutating func u32() throws(WireError) -> UInt32 { try need(reader.u32()) }
    mutating func u64() throws(WireError) -> UInt64 { try need(reader.u64()) }
    mutating func raw(_ count: Int) throws(WireError) -> [UInt8] { try need(reader.bytes(count)) }

    private func need<T>(_ value: T?) throws(WireError) -> T {
        guard let value else { throw .malformed(type: type, reason: "cut short at byte \(reader.offset)") }
        return value
    }
}
