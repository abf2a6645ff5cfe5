// The guest's network stack (protocol.md §5.7): Ethernet, ARP (answers, and a
// gratuitous ARP to announce itself), IPv4 (no options out, no fragments),
// ICMP echo and UDP. Replies go straight back to the sender's MAC, so the
// guest needs no ARP cache. Every length in a received frame is checked
// before it is used: a malformed frame is dropped and counted.

/// Big-endian access to frame bytes.
struct Bytes {
    let p: UnsafeMutablePointer<UInt8>

    @inline(__always) func u16(_ at: Int) -> UInt16 { UInt16(p[at]) << 8 | UInt16(p[at + 1]) }
    @inline(__always) func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) << 16 | UInt32(u16(at + 2)) }
    @inline(__always) func set16(_ at: Int, _ v: UInt16) {
        p[at] = UInt8(truncatingIfNeeded: v >> 8)
        p[at + 1] = UInt8(truncatingIfNeeded: v)
    }
    @inline(__always) func set32(_ at: Int, _ v: UInt32) {
        set16(at, UInt16(truncatingIfNeeded: v >> 16))
        set16(at + 2, UInt16(truncatingIfNeeded: v))
    }
    /// A MAC stored as the net page's u64 (byte 0 first on the wire).
    func setMAC(_ at: Int, _ mac: UInt64) {
        var i = 0
        while i < 6 {
            p[at + i] = UInt8(truncatingIfNeeded: mac >> (8 * UInt64(i)))
            i += 1
        }
    }
    func copy(_ at: Int, from source: UnsafeMutablePointer<UInt8>, _ count: Int) {
        var i = 0
        while i < count {
            p[at + i] = source[i]
            i += 1
        }
    }

    /// The Internet checksum (RFC 1071) of `count` bytes at `at`, starting from `sum`.
    func checksum(_ at: Int, _ count: Int, sum start: UInt32 = 0) -> UInt16 {
        var sum = start
        var i = 0
        while i + 1 < count {
            sum &+= UInt32(u16(at + i))
            i += 2
        }
        if i < count { sum &+= UInt32(p[at + i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) &+ (sum >> 16) }
        return ~UInt16(truncatingIfNeeded: sum)
    }
}

struct NetStack {
    static let ethHeader = 14
    static let typeIPv4: UInt16 = 0x0800
    static let typeARP: UInt16 = 0x0806
    static let broadcast: UInt64 = 0xffff_ffff_ffff

    var device: NetDevice
    let ip: UInt32
    /// Frames dropped as malformed or not for us (informational).
    var dropped: UInt64 = 0

    init(device: NetDevice, ip: UInt32) {
        self.device = device
        self.ip = ip
    }

    /// A gratuitous ARP request (sender = target = our address), broadcast: the bridge and
    /// every neighbour learn where our MAC and address are (after boot; after a move, §5.7).
    mutating func announce() {
        let out = Bytes(p: device.nextTxBuffer())
        out.setMAC(0, Self.broadcast)
        out.setMAC(6, device.mac)
        out.set16(12, Self.typeARP)
        writeARP(out, op: 1, targetMAC: 0, targetIP: ip)
        device.send(length: Self.ethHeader + 28)
    }

    private func writeARP(_ out: Bytes, op: UInt16, targetMAC: UInt64, targetIP: UInt32) {
        out.set16(14, 1)            // Ethernet
        out.set16(16, Self.typeIPv4)
        out.p[18] = 6
        out.p[19] = 4
        out.set16(20, op)
        out.setMAC(22, device.mac)
        out.set32(28, ip)
        out.setMAC(32, targetMAC)
        out.set32(38, targetIP)
    }

    /// Handles one received frame; `udp` answers UDP datagrams (payload in, reply length out,
    /// written at the reply's payload; nil = no reply).
    mutating func handle(_ frame: UnsafeMutablePointer<UInt8>, _ length: Int,
                         udp: (UInt16, UnsafeMutablePointer<UInt8>, Int, UnsafeMutablePointer<UInt8>) -> Int?) {
        let f = Bytes(p: frame)
        guard length >= Self.ethHeader else { dropped &+= 1; return }
        switch f.u16(12) {
        case Self.typeARP: handleARP(f, length)
        case Self.typeIPv4: handleIPv4(f, length, udp: udp)
        default: dropped &+= 1
        }
    }

    private mutating func handleARP(_ f: Bytes, _ length: Int) {
        guard length >= Self.ethHeader + 28, f.u16(14) == 1, f.u16(16) == Self.typeIPv4, f.p[18] == 6, f.p[19] == 4,
              f.u16(20) == 1, f.u32(38) == ip else { dropped &+= 1; return }
        var senderMAC: UInt64 = 0
        var i = 0
        while i < 6 {
            senderMAC |= UInt64(f.p[22 + i]) << (8 * UInt64(i))
            i += 1
        }
        let senderIP = f.u32(28)
        let out = Bytes(p: device.nextTxBuffer())
        out.setMAC(0, senderMAC)
        out.setMAC(6, device.mac)
        out.set16(12, Self.typeARP)
        writeARP(out, op: 2, targetMAC: senderMAC, targetIP: senderIP)
        device.send(length: Self.ethHeader + 28)
    }

    private mutating func handleIPv4(_ f: Bytes, _ length: Int,
                                     udp: (UInt16, UnsafeMutablePointer<UInt8>, Int, UnsafeMutablePointer<UInt8>) -> Int?) {
        let ipAt = Self.ethHeader
        guard length >= ipAt + 20, f.p[ipAt] >> 4 == 4 else { dropped &+= 1; return }
        let headerLength = Int(f.p[ipAt] & 0xf) * 4
        let total = Int(f.u16(ipAt + 2))
        guard headerLength >= 20, total >= headerLength, ipAt + total <= length,
              f.checksum(ipAt, headerLength) == 0, f.u32(ipAt + 16) == ip,
              f.u16(ipAt + 6) & 0x3fff == 0 else { dropped &+= 1; return } // no fragments
        let source = f.u32(ipAt + 12)
        let payloadAt = ipAt + headerLength
        let payloadLength = total - headerLength
        switch f.p[ipAt + 9] {
        case 1: // ICMP: echo request → echo reply with the same identifier, sequence and data
            guard payloadLength >= 8, f.p[payloadAt] == 8, f.checksum(payloadAt, payloadLength) == 0 else {
                dropped &+= 1; return
            }
            guard payloadLength <= NetDevice.maxFrame - Self.ethHeader - 20 else { dropped &+= 1; return }
            let out = beginIPv4Reply(f, to: source, protocol: 1, payloadLength: payloadLength)
            out.copy(34, from: f.p + payloadAt, payloadLength)
            out.p[34] = 0
            out.p[35] = 0
            out.set16(36, 0)
            out.set16(36, out.checksum(34, payloadLength))
            device.send(length: 34 + payloadLength)
        case 17: // UDP
            guard payloadLength >= 8, Int(f.u16(payloadAt + 4)) >= 8, Int(f.u16(payloadAt + 4)) <= payloadLength else {
                dropped &+= 1; return
            }
            let datagramLength = Int(f.u16(payloadAt + 4)) - 8
            let sourcePort = f.u16(payloadAt), port = f.u16(payloadAt + 2)
            let out = Bytes(p: device.nextTxBuffer())
            let maxReply = NetDevice.maxFrame - 42
            guard let replyLength = udp(port, f.p + payloadAt + 8, datagramLength, out.p + 42),
                  replyLength <= maxReply else { return }
            _ = beginIPv4Reply(f, to: source, protocol: 17, payloadLength: 8 + replyLength)
            out.set16(34, port)
            out.set16(36, sourcePort)
            out.set16(38, UInt16(8 + replyLength))
            out.set16(40, 0)
            // The UDP checksum over the pseudo-header (addresses, protocol, length) and datagram.
            let pseudo = (ip >> 16) &+ (ip & 0xffff) &+ (source >> 16) &+ (source & 0xffff) &+ 17 &+ UInt32(8 + replyLength)
            let sum = out.checksum(34, 8 + replyLength, sum: pseudo)
            out.set16(40, sum == 0 ? 0xffff : sum)
            device.send(length: 42 + replyLength)
        default:
            dropped &+= 1
        }
    }

    /// Writes the Ethernet and IPv4 headers of a reply to the frame in `f` into the next TX
    /// buffer (the same buffer `nextTxBuffer()` returns until `send`).
    private mutating func beginIPv4Reply(_ f: Bytes, to destination: UInt32, protocol number: UInt8,
                                         payloadLength: Int) -> Bytes {
        let out = Bytes(p: device.nextTxBuffer())
        out.copy(0, from: f.p + 6, 6)   // to the sender's MAC
        out.setMAC(6, device.mac)
        out.set16(12, Self.typeIPv4)
        out.p[14] = 0x45
        out.p[15] = 0
        out.set16(16, UInt16(20 + payloadLength))
        out.set16(18, 0)
        out.set16(20, 0x4000)           // don't fragment
        out.p[22] = 64
        out.p[23] = number
        out.set16(24, 0)
        out.set32(26, ip)
        out.set32(30, destination)
        out.set16(24, out.checksum(14, 20))
        return out
    }
}
