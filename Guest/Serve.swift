// workload=serve (protocol.md §1.7, §5.7): the NIC, the network stack and a UDP
// key-value store on port 7070 whose values live in guest memory (the NIC
// area's store, so a migration carries them).
//
// Requests and responses are ASCII datagrams (§5.7):
//   SET <key> <value>   ->  OK <key>
//   GET <key>           ->  VALUE <key> <value>   or   NOTFOUND <key>
//   anything else       ->  ERR <reason>
// key: 1–32 bytes without spaces; value: 1–200 bytes (the rest of the datagram).

/// 512 slots of 256 bytes: { u8 used; u8 key_length; u8 value_length; u8 0; key[32]; value[200]; pad }.
struct KVStore {
    static let slots = 512
    static let slotSize = 256
    static let maxKey = 32
    static let maxValue = 200
    static let port: UInt16 = 7070

    let base: UnsafeMutablePointer<UInt8>

    func clear() { Layout.zero(gpa: UInt64(UInt(bitPattern: base)), words: UInt64(Self.slots * Self.slotSize / 8)) }

    /// The slot holding `key`, or the empty slot where it would go; nil when the store is full.
    private func find(_ key: UnsafeMutablePointer<UInt8>, _ length: Int) -> UnsafeMutablePointer<UInt8>? {
        var hash: UInt32 = 2_166_136_261 // FNV-1a
        var i = 0
        while i < length {
            hash = (hash ^ UInt32(key[i])) &* 16_777_619
            i += 1
        }
        var probe = 0
        while probe < Self.slots {
            let slot = base + (Int(hash &+ UInt32(probe)) % Self.slots) * Self.slotSize
            if slot[0] == 0 { return slot }
            if Int(slot[1]) == length && Self.equal(slot + 4, key, length) { return slot }
            probe += 1
        }
        return nil
    }

    private static func equal(_ a: UnsafeMutablePointer<UInt8>, _ b: UnsafeMutablePointer<UInt8>, _ n: Int) -> Bool {
        var i = 0
        while i < n {
            if a[i] != b[i] { return false }
            i += 1
        }
        return true
    }

    /// Answers one request (`request`, `length` bytes) into `reply`; returns the reply's length.
    func answer(_ request: UnsafeMutablePointer<UInt8>, _ length: Int, _ reply: UnsafeMutablePointer<UInt8>) -> Int {
        var out = Writer(p: reply)
        // Split "VERB key[ value]".
        var keyStart = 0
        while keyStart < length && request[keyStart] != 0x20 { keyStart += 1 }
        let verbLength = keyStart
        keyStart += 1
        var keyEnd = keyStart
        while keyEnd < length && request[keyEnd] != 0x20 { keyEnd += 1 }
        let keyLength = keyEnd - keyStart
        let isSet = verbLength == 3 && request[0] == 0x53 && request[1] == 0x45 && request[2] == 0x54
        let isGet = verbLength == 3 && request[0] == 0x47 && request[1] == 0x45 && request[2] == 0x54
        guard isSet || isGet else {
            out.append("ERR bad request")
            return out.count
        }
        guard keyStart <= length, keyLength >= 1, keyLength <= Self.maxKey else {
            out.append("ERR bad key")
            return out.count
        }
        let key = request + keyStart
        if isGet && keyEnd == length {
            guard let slot = find(key, keyLength), slot[0] == 1 else {
                out.append("NOTFOUND ")
                out.append(key, keyLength)
                return out.count
            }
            out.append("VALUE ")
            out.append(key, keyLength)
            out.append(" ")
            out.append(slot + 4 + Self.maxKey, Int(slot[2]))
            return out.count
        }
        if isSet {
            let valueLength = length - keyEnd - 1
            guard valueLength >= 1, valueLength <= Self.maxValue else {
                out.append("ERR bad value")
                return out.count
            }
            guard let slot = find(key, keyLength) else {
                out.append("ERR full")
                return out.count
            }
            Bytes(p: slot + 4).copy(0, from: key, keyLength)
            Bytes(p: slot + 4 + Self.maxKey).copy(0, from: request + keyEnd + 1, valueLength)
            slot[1] = UInt8(keyLength)
            slot[2] = UInt8(valueLength)
            slot[0] = 1  // stored before the acknowledgement is sent
            out.append("OK ")
            out.append(key, keyLength)
            return out.count
        }
        out.append("ERR bad request")
        return out.count
    }
}

/// Appends bytes to a reply.
struct Writer {
    let p: UnsafeMutablePointer<UInt8>
    var count = 0

    mutating func append(_ text: StaticString) { append(UnsafeMutablePointer(mutating: text.utf8Start), text.utf8CodeUnitCount) }
    mutating func append(_ bytes: UnsafeMutablePointer<UInt8>, _ n: Int) {
        Bytes(p: p + count).copy(0, from: bytes, n)
        count += n
    }
}

enum Serve {
    static func run(_ kernel: Kernel) {
        guard kernel.registered else { panic("serve: needs the PV interface (registered)") }
        var device = NetDevice(area: kernel.layout.netArea, pv: kernel.pv)
        guard device.available else { panic("serve: the host offers no PV NIC (run with --net)") }
        device.prepare(netSleep: kernel.options.netSleep)
        guard device.attach() else { panic("serve: the host refused NET_ATTACH") }
        let store = KVStore(base: device.pointer(NetArea.store).assumingMemoryBound(to: UInt8.self))
        store.clear()
        var stack = NetStack(device: device, ip: kernel.options.ip)
        var line = ConsoleLine("pvguest: net mac ")
        var i: UInt64 = 0
        while i < 6 {
            if i > 0 { line.append(":") }
            line.append(hexByte: UInt8(truncatingIfNeeded: stack.device.mac >> (8 * i)))
            i += 1
        }
        line.append(" ip ")
        line.append(ipv4: kernel.options.ip)
        line.append("/")
        line.append(decimal: UInt64(kernel.options.prefix))
        line.emit()
        stack.announce()
        Console.log("serving udp 7070")
        var announcer = Announcer(clock: kernel.clock)
        while true {
            // After a migration or a restore the bridge must learn the new port at once (§5.8),
            // and again a few times in case the first one is lost (as QEMU's announce-self).
            if stack.device.movedSinceAnnounced() { announcer.start() }
            if announcer.due() { stack.announce() }
            guard let (frame, length) = stack.device.peek() else {
                stack.device.waitForFrames(milliseconds: announcer.millisecondsToNext(orAtMost: 1000))
                continue
            }
            stack.device.flushKick() // the last frame's reply goes out before this one is handled
            if length > 0 {
                stack.handle(frame, length) { port, request, requestLength, reply in
                    port == KVStore.port ? store.answer(request, requestLength, reply) : nil
                }
            }
            stack.device.consume()
        }
    }
}

/// The gratuitous ARPs after a move (§5.8): one at once, then after 50, 150, 250 and 350 ms
/// more (QEMU's announce-self defaults: 5 rounds, 50 ms initial, +100 ms per round).
struct Announcer {
    static let rounds: UInt64 = 5
    let clock: Clock
    var left: UInt64 = 0
    var next: UInt64 = 0

    mutating func start() {
        left = Self.rounds
        next = clock.now()
    }

    /// True when an announcement is due now (and counts it).
    mutating func due() -> Bool {
        guard left > 0, clock.now() >= next else { return false }
        left -= 1
        let gapMilliseconds = 50 &+ 100 &* (Self.rounds &- 1 &- left)
        next = clock.now() &+ gapMilliseconds &* clock.ticksPerMillisecond
        return true
    }

    /// How long the receive loop may sleep before the next announcement (1 … `limit` ms).
    func millisecondsToNext(orAtMost limit: UInt32) -> UInt32 {
        guard left > 0 else { return limit }
        let now = clock.now()
        guard next > now, clock.ticksPerMillisecond > 0 else { return 1 }
        let ms = (next &- now) / clock.ticksPerMillisecond &+ 1
        return ms < UInt64(limit) ? UInt32(ms) : limit
    }
}

extension ConsoleLine {
    mutating func append(hexByte byte: UInt8) {
        let high = byte >> 4, low = byte & 0xf
        append(byte: high < 10 ? 0x30 &+ high : 0x61 &+ high &- 10)
        append(byte: low < 10 ? 0x30 &+ low : 0x61 &+ low &- 10)
    }

    mutating func append(ipv4 address: UInt32) {
        var shift: UInt32 = 24
        while true {
            append(decimal: UInt64((address >> shift) & 0xff))
            if shift == 0 { break }
            append(".")
            shift -= 8
        }
    }
}
