import Core
import Testing

@Suite struct DeviceTests {
    private func write32(_ device: PortDevice, _ port: UInt16, _ value: UInt32) -> IOAction {
        withUnsafeBytes(of: value.littleEndian) { device.write(port: port, data: $0) }
    }

    @Test func pvPortAcceptsHelloAndSleep() {
        let pv = PVPort()
        #expect(write32(pv, PVPort.port, 0x001 | (1 << 12)) == .proceed)
        #expect(write32(pv, PVPort.port, 0x002 | (100 << 12)) == .sleep(milliseconds: 100))
        #expect(pv.counters == .init(guestVersion: 1, hellos: 1, sleeps: 1, rejected: 0))
    }

    /// A hostile guest: unknown ops, out-of-range arguments, wrong access widths. Each is
    /// refused and counted; nothing else changes.
    @Test func pvPortRejectsAndCountsBadWrites() {
        let pv = PVPort()
        #expect(write32(pv, PVPort.port, 0x000) == .proceed)           // op 0: invalid
        #expect(write32(pv, PVPort.port, 0xfff | (5 << 12)) == .proceed) // unknown op
        #expect(write32(pv, PVPort.port, 0x002) == .proceed)           // sleep 0 ms
        #expect([UInt8](arrayLiteral: 1).withUnsafeBytes { pv.write(port: PVPort.port, data: $0) } == .proceed) // 8-bit
        #expect(pv.counters.rejected == 4)
        #expect(pv.counters.sleeps == 0 && pv.counters.guestVersion == nil)
    }

    @Test func serialBuffersLinesAndFlushes() {
        let out = ConsoleBuffer()
        let serial = SerialPort(sink: out)
        for b in Array("hi\nthere".utf8) {
            _ = [b].withUnsafeBytes { serial.write(port: SerialPort.base, data: $0) }
        }
        #expect(out.text == "hi\n")
        serial.flush()
        #expect(out.text == "hi\nthere")
        var lsr: UInt8 = 0
        withUnsafeMutableBytes(of: &lsr) { serial.read(port: SerialPort.base + 5, data: $0) }
        #expect(lsr == 0x60)
    }

    @Test func exitPortCarriesStatus() {
        #expect(write32(ExitPort(), ExitPort.port, 7) == .exit(status: 7))
    }

    @Test func unclaimedPortsReadAllOnesAndAreCounted() {
        let bus = IOBus()
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { bus.read(port: 0x80, data: $0) }
        #expect(v == 0xffff_ffff)
        #expect(bus.unclaimedAccesses == 1)
    }
}
