import Core
import Testing

@Suite struct DeviceTests {
    private func write32(_ device: PortDevice, _ port: UInt16, _ value: UInt32) -> IOAction {
        withUnsafeBytes(of: value.littleEndian) { device.write(port: port, data: $0) }
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
