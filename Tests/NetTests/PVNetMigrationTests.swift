@testable import Core
import Testing

/// The NIC across a save and restore (protocol.md §5.8) against a simulated guest: the
/// destination takes the source's memory and `net` section, re-validates the net page, and
/// bumps `announce`; a quiesced NIC touches no guest memory.
extension PVNetTests {
    /// A second VM's memory holding the source's bytes (what a migration delivers).
    func copyOfMemory() -> GuestMemory {
        let copy = try! GuestMemory(size: memory.size)
        try! copy.copyContents(from: memory)
        return copy
    }

    @Test func attachTellsTheVCPUThreadAndARestoredNICAnnounces() throws {
        let pv = registeredPV()
        prepareNetPage()
        #expect(call(pv, 0x020, UInt32(netGPA >> 12)) == .netAttached, "the vCPU must learn it attached the NIC")
        let net = pv.net!
        net.setRXVCPU(0)
        #expect(u32(netGPA + 0x5c) == 0, "announce starts at 0")
        let frame = [UInt8](repeating: 0xab, count: 60)
        try memory.write(frame, at: GuestPhysicalAddress(buffers))
        queueTx([(buffers, 60), (buffers, 60)])
        #expect(transmitAll(net).count == 2)
        net.setQuiesced(true)
        let saved = net.saveState()
        #expect(saved.netPage == netGPA && saved.txCons == 2 && saved.txFrames == 2 && saved.mac == mac)

        // The destination: same memory, a NIC built with another MAC, the PV state restored first.
        let copy = copyOfMemory()
        let other = PVInterface(memory: copy, console: ConsoleBuffer(), net: PVNet(memory: copy, mac: MACAddress.random()))
        try other.restoreState(pv.saveState())
        try other.net!.restoreState(try PVNet.State(encoded: saved.encoded()))
        let restored = other.net!
        #expect(restored.isAttached && restored.mac == mac && restored.snapshot.txFrames == 2)
        func at(_ gpa: UInt64) -> UInt32 { try! copy.readInteger(UInt32.self, at: GuestPhysicalAddress(gpa)) }
        #expect(at(netGPA + 0x5c) == 1, "announce must move so the guest announces itself")
        #expect(at(netGPA + 0x50) == 2 && at(netGPA + 0x58) == 2, "tx_cons and tx_event = tx_cons")
        #expect(restored.savedState().announce == 1)
    }

    @Test(arguments: ["magic", "ringOnControlPage", "outsideRAM"])
    func restoreRevalidatesTheNetPage(_ flaw: String) throws {
        let (pv, net) = attached()
        net.setQuiesced(true)
        var saved = net.saveState()
        let copy = copyOfMemory()
        switch flaw {
        case "magic": try copy.writeInteger(UInt32(0x1234), at: GuestPhysicalAddress(netGPA))
        case "ringOnControlPage": try copy.writeInteger(controlGPA, at: GuestPhysicalAddress(netGPA + 8))
        default: saved.netPage = 64 << 20
        }
        let other = PVInterface(memory: copy, console: ConsoleBuffer(), net: PVNet(memory: copy, mac: mac))
        try other.restoreState(pv.saveState())
        #expect(throws: MachineError.self, "\(flaw) was restored") { try other.net!.restoreState(saved) }
        #expect(!other.net!.isAttached)
    }

    @Test func aQuiescedNICWritesNoGuestMemory() throws {
        let (_, net) = attached()
        descriptor(rxGPA, 0, gpa: buffers, length: 2048)
        put32(netGPA + 0x84, 1)
        queueTx([(buffers + 4096, 60)])
        _ = memory.takeHostWrittenPages()
        net.setQuiesced(true)
        let frame = [UInt8](repeating: 7, count: 60)
        let taken = frame.withUnsafeBytes { net.deliver([$0]) }
        #expect(!taken, "a quiesced NIC must hand the frames back")
        #expect(transmitAll(net).isEmpty && !net.armKick())
        #expect(memory.takeHostWrittenPages().isEmpty, "nothing may be written between the last harvest and the saved state")
        #expect(u32(netGPA + 0x54) == 0 && u32(netGPA + 0x50) == 0)
        net.setQuiesced(false)
        #expect(frame.withUnsafeBytes { net.deliver([$0]) })
        #expect(u32(netGPA + 0x54) == 1 && transmitAll(net).count == 1)
    }
}
