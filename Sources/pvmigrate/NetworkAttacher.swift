import Core
import Foundation
import Migrate
import Net
import Operations

/// Gives a VM's PV NIC a new TAP on a bridge and an I/O thread (protocol.md §5): for a VM
/// that arrives (`listen --net-bridge`) or is restored from a snapshot (`restore --net`).
enum NetworkAttacher {
    /// `ReceiverOptions.attachNetwork` for `listen --net-bridge BRIDGE [--net-poll-us N]`.
    static func bridge(_ bridge: String, pollMicroseconds: Int = NetSpec.defaultPollMicroseconds) -> @Sendable (PVNet, String) throws -> NetworkAttachment {
        { device, _ in try attach(device, spec: NetSpec(attachment: .bridge(bridge), pollMicroseconds: pollMicroseconds)) }
    }

    /// Opens the TAP `spec` names, starts a `NICBackend` on it for `device`; `detach()` stops it
    /// and closes the TAP (a TAP pvmigrate created disappears then).
    static func attach(_ device: PVNet, spec: NetSpec) throws -> NetworkAttachment {
        let tap = try spec.openTap()
        let backend = try NICBackend(device: device, tap: tap, pollMicroseconds: spec.pollMicroseconds)
        backend.start()
        var description = "TAP \(tap.name)"
        if case let .bridge(b) = spec.attachment { description += " on bridge \(b)" }
        return NetworkAttachment(description: description) {
            // As `run` does for its own TAP: what arrived here for the VM and never reached it
            // (after it left, or while a failed arrival was paused) goes with the TAP (§5.8).
            backend.stop()
            let left = backend.framesHeldAtStop + backend.discardQueued()
            ListenLog.event("nic_discarded", ["frames": "\(left)", "tap": "\(tap.name)"],
                            text: "PV NIC: \(left) frame(s) that arrived for the VM were discarded with TAP \(tap.name)",
                            to: Log.vm)
        }
    }
}
