import Core

extension VMStatus {
    /// The PV NIC's counters (protocol.md §4 `status`, §5.6): traffic each way, frames dropped
    /// for want of an RX buffer, and the guest's rejected requests by reason. They survive a
    /// migration or a restore (the `net` section, §5.8), except the rejections.
    public struct NIC: Codable, Sendable, Equatable {
        public var mac: String
        public var attached: Bool
        public var txFrames: Int, txBytes: Int, rxFrames: Int, rxBytes: Int
        public var rxDropped: Int
        public var kicks: Int, wakes: Int
        /// Rejections by reason (§5.6 names); only reasons that occurred.
        public var rejected: [String: Int]

        public init(mac: String, attached: Bool, counters c: PVNet.Counters) {
            self.mac = mac
            self.attached = attached
            txFrames = c.txFrames; txBytes = c.txBytes; rxFrames = c.rxFrames; rxBytes = c.rxBytes
            rxDropped = c.rxDropped; kicks = c.kicks; wakes = c.wakes
            rejected = Dictionary(uniqueKeysWithValues: c.rejected.map { ($0.key.rawValue, $0.value) })
        }

        /// The NIC of `device` now.
        public init(_ device: PVNet) {
            let c = device.snapshot
            self.init(mac: device.mac.description, attached: c.attached, counters: c)
        }

        enum CodingKeys: String, CodingKey {
            case mac, attached, txFrames = "tx_frames", txBytes = "tx_bytes", rxFrames = "rx_frames", rxBytes = "rx_bytes"
            case rxDropped = "rx_dropped", kicks, wakes, rejected
        }
    }
}
