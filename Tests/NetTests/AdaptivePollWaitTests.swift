import Core
import Foundation
@testable import Net
import Posix
import Testing
import TestSupport

/// The NET_SLEEP wait's busy-poll window on a real backend (`TapReceiver` with `AdaptivePoll`):
/// frames that arrive while the vCPU thread waits make it poll longer next time, and waits that
/// time out with nothing bring it back to 0 — an idle NIC costs no core. As `TapReceiverTests`:
/// a socket pair stands in for the TAP, a test thread plays the vCPU thread.
extension PVNetTests {
    @Test func thePollWindowGrowsWhileFramesComeAndFallsToZeroWhenTheNICIsQuiet() throws {
        let (_, net) = attached()
        post(entries)
        let (backend, peer) = try socketBackend(net, pollMicroseconds: NetSpec.maximumPollMicroseconds)
        backend.start()
        defer { backend.stop() }
        let interrupt = try eventfd()
        #expect(backend.receiver.pollWindow == 0, "a NIC that has seen no traffic polls")
        // Three frames, each sent once the vCPU thread waits (well within the 100 ms limit).
        for k in UInt32(0)..<3 {
            let returned = Locked<Bool?>(nil)
            Thread { returned.withLock { $0 = net.waitForFrames(vcpu: 0, milliseconds: 120_000, interrupt: interrupt.rawValue) } }.start()
            try #require(Wait.until { backend.receiver.currentOwner == .vcpu }, "the vCPU thread never took the TAP (frame \(k))")
            try send(k, to: peer)
            try #require(Wait.until { returned.value != nil }, "the wait did not end on frame \(k)")
        }
        #expect(net.snapshot.rxFrames == 3 && backend.receiver.counts.vcpu == 3)
        let grown = backend.receiver.pollWindow
        #expect((AdaptivePoll.growStart...4 * AdaptivePoll.growStart).contains(grown),
                "after 3 frames that came while it slept the window is \(grown) ns, expected 10–40 µs")
        // The NIC falls quiet: each 1 ms wait times out and halves the window, down to 0.
        var quiet = 0
        while backend.receiver.pollWindow > 0, quiet < 20 {
            #expect(net.waitForFrames(vcpu: 0, milliseconds: 1, interrupt: interrupt.rawValue))
            quiet += 1
        }
        #expect(backend.receiver.pollWindow == 0, "still polling \(backend.receiver.pollWindow) ns after \(quiet) quiet waits")
        #expect(net.snapshot.rxFrames == 3)
    }
}
