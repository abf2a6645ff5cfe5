import Core

/// What `--net` asked for: `bridge=BR[,mac=MAC]` (a new TAP on bridge BR) or
/// `tap=NAME[,mac=MAC]` (an existing TAP), each with an optional `poll-us=N`. Without `mac` the
/// VM gets a random locally administered address.
public struct NetSpec: Sendable, Equatable {
    public enum Attachment: Sendable, Equatable {
        case bridge(String)
        case tap(String)
    }

    public var attachment: Attachment
    public var mac: MACAddress?
    /// `poll-us=N`: while the guest sleeps (NET_SLEEP), its vCPU thread may busy-poll the TAP for
    /// up to N µs before it sleeps — lower round trips for a core's time. How long it polls
    /// adapts to the traffic (`AdaptivePoll`: 0 while the NIC is quiet); N is the most, 0 never.
    public var pollMicroseconds = NetSpec.defaultPollMicroseconds
    public static let maximumPollMicroseconds = 100_000
    /// The default most: a little over the 2 ms between `ping -i 0.002`'s requests, so a steady
    /// flow of 500 requests/s or more is polled for (docs/benchmarks.md).
    public static let defaultPollMicroseconds = 2_500

    public init(attachment: Attachment, mac: MACAddress? = nil, pollMicroseconds: Int = NetSpec.defaultPollMicroseconds) {
        self.attachment = attachment
        self.mac = mac
        self.pollMicroseconds = pollMicroseconds
    }

    /// Parses the option's text; the error says what is wrong and what is expected.
    public init(parsing text: String) throws(NetSpecError) {
        var attachment: Attachment?
        var mac: MACAddress?
        var poll: Int?
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2, !pair[1].isEmpty else { throw NetSpecError("\"\(item)\" is not key=value") }
            let value = String(pair[1])
            switch pair[0] {
            case "bridge", "tap":
                guard attachment == nil else { throw NetSpecError("give one of bridge= or tap=, once") }
                do { try TapDevice.check(name: value) } catch { throw NetSpecError(error.description) }
                attachment = pair[0] == "bridge" ? .bridge(value) : .tap(value)
            case "mac":
                guard mac == nil else { throw NetSpecError("mac= given twice") }
                guard let m = MACAddress(value) else {
                    throw NetSpecError("mac=\(value) is not a unicast MAC address like 52:54:00:12:34:56")
                }
                mac = m
            case "poll-us":
                guard poll == nil else { throw NetSpecError("poll-us= given twice") }
                guard let n = Int(value), (0...Self.maximumPollMicroseconds).contains(n) else {
                    throw NetSpecError("poll-us=\(value) is not a number of microseconds from 0 to \(Self.maximumPollMicroseconds)")
                }
                poll = n
            default:
                throw NetSpecError("unknown key \"\(pair[0])\" (expected bridge=, tap=, mac= or poll-us=)")
            }
        }
        guard let attachment else { throw NetSpecError("say where the NIC goes: bridge=BR or tap=NAME") }
        self.init(attachment: attachment, mac: mac, pollMicroseconds: poll ?? Self.defaultPollMicroseconds)
    }

    /// Opens the TAP this spec names (and adds it to the bridge), ready for a `NICBackend`.
    public func openTap() throws(NetError) -> TapDevice {
        switch attachment {
        case let .bridge(bridge):
            try TapDevice.check(bridge: bridge) // before a TAP exists: nothing to undo
            let tap = try TapDevice()
            try tap.attach(toBridge: bridge)
            return tap
        case let .tap(name):
            let tap = try TapDevice(existing: name)
            try tap.up()
            return tap
        }
    }
}

public struct NetSpecError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = "--net: " + description }
}
