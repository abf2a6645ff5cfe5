import CKVM

/// The PV NIC's shared page and descriptor layout (protocol.md §5.2–5.3) and untorn access
/// to its fields. A `NetPage` only exists for a page `PVNet` validated to lie in guest RAM.
struct NetPage {
    static let magic: UInt32 = 0x544e_5650 // "PVNT"
    /// 1; 2 adds the host's `announce` (§5.2); 3 says the guest uses NET_SLEEP (§5.5). The host
    /// accepts all three (a host without NET_SLEEP refuses 3, so such a guest cannot move there).
    static let versions: ClosedRange<UInt16> = 1...3
    /// Ring sizes the host accepts (entries, a power of two).
    static let entryLimits: ClosedRange<UInt32> = 8...1024
    static let descriptorSize: UInt64 = 16

    enum Field: Int {
        // guest-written configuration
        case magic = 0x000, version = 0x004, txRingGPA = 0x008, rxRingGPA = 0x010
        case txEntries = 0x018, rxEntries = 0x01c
        // host-written
        case mac = 0x040, hostStatus = 0x048, maxFrame = 0x04c, txCons = 0x050, rxProd = 0x054, txEvent = 0x058
        case announce = 0x05c
        // guest-written indices
        case txProd = 0x080, rxAvail = 0x084, rxEvent = 0x088
    }

    /// A descriptor's `status` (protocol.md §5.3).
    enum Status: UInt32 {
        case done = 1, badLength = 2, badAddress = 3
    }

    let gpa: GuestPhysicalAddress
    /// Sound while the VM's memory lives: validated to be a whole RAM page.
    let host: UnsafeMutableRawPointer

    func u32(_ f: Field) -> UInt32 { ckvm_load_acquire_u32(host + f.rawValue) }
    func u64(_ f: Field) -> UInt64 { ckvm_load_acquire_u64(host + f.rawValue) }
    func set(_ f: Field, _ v: UInt32) { ckvm_store_release_u32(host + f.rawValue, v) }
    func set64(_ f: Field, _ v: UInt64) { ckvm_store_release_u64(host + f.rawValue, v) }
}

/// One descriptor ring of `entries` 16-byte descriptors `{ u64 gpa; u32 length; u32 status }`
/// in guest RAM (validated at attach: page-aligned, inside one RAM region).
struct NetRing {
    let gpa: GuestPhysicalAddress
    let host: UnsafeMutableRawPointer
    let entries: UInt32

    var range: GuestRange { GuestRange(start: gpa, size: UInt64(entries) * NetPage.descriptorSize)! }

    /// The descriptor at free-running index `index`: each field read once (the guest may change
    /// it meanwhile; the host acts only on these copies).
    func descriptor(_ index: UInt32) -> (gpa: UInt64, length: UInt32) {
        let slot = host + Int(index % entries) * Int(NetPage.descriptorSize)
        return (ckvm_load_acquire_u64(slot), ckvm_load_acquire_u32(slot + 8))
    }

    /// The host's answer in a descriptor: its length (RX: the frame's) and status.
    func complete(_ index: UInt32, length: UInt32?, status: NetPage.Status) {
        let slot = host + Int(index % entries) * Int(NetPage.descriptorSize)
        if let length { ckvm_store_release_u32(slot + 8, length) }
        ckvm_store_release_u32(slot + 12, status.rawValue)
    }
}

/// A MAC address (the VMM gives one to the guest, protocol.md §5.2).
public struct MACAddress: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// Six colon-separated hex octets, e.g. `52:54:00:12:34:56`; a unicast address.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            bytes.append(b)
        }
        self.init(bytes: bytes)
    }

    /// A random locally administered unicast address (`x2:…`, `x6:…`, `xa:…` or `xe:…`).
    public static func random() -> MACAddress {
        var g = SystemRandomNumberGenerator()
        var b = (0..<6).map { _ in UInt8.random(in: 0...255, using: &g) }
        b[0] = (b[0] & 0xfc) | 0x02
        return MACAddress(bytes: b)!
    }

    /// Six bytes in wire order; nil unless a unicast address other than zero.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 6, bytes[0] & 1 == 0, bytes != [0, 0, 0, 0, 0, 0] else { return nil }
        self.bytes = bytes
    }

    /// The address as the net page's u64 (bytes in order, two zero bytes after).
    var word: UInt64 { bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) } }

    public var description: String { bytes.map { String(format2: $0) }.joined(separator: ":") }
}

private extension String {
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self.init([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
    }
}
