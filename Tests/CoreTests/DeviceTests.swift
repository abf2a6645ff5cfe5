import Core
import Testing

@Suite struct DeviceTests {
    private func write32(_ device: BusDevice, _ value: UInt32) -> IOAction {
        withUnsafeBytes(of: value.littleEndian) { device.write(offset: 0, data: $0) }
    }

    @Test func serialBuffersLinesAndFlushes() {
        let out = ConsoleBuffer()
        let serial = SerialPort(sink: out)
        for b in Array("hi\nthere".utf8) {
            _ = [b].withUnsafeBytes { serial.write(offset: 0, data: $0) }
        }
        #expect(out.text == "hi\n")
        serial.flush()
        #expect(out.text == "hi\nthere")
        var lsr: UInt8 = 0
        withUnsafeMutableBytes(of: &lsr) { serial.read(offset: 5, data: $0) }
        #expect(lsr == 0x60)
    }

    @Test func exitPortCarriesStatus() {
        #expect(write32(ExitPort(), 7) == .exit(status: 7))
    }

    @Test func mmioBusRoutesByOffsetAndCountsStrays() {
        let bus = MMIOBus()
        let out = ConsoleBuffer()
        bus.register(SerialPort(sink: out), base: 0xfe00_0000, count: 8)
        _ = [UInt8(0x41), 0x0a].withUnsafeBytes { b in
            bus.write(port: 0xfe00_0000, data: UnsafeRawBufferPointer(rebasing: b[0..<1]))
            return bus.write(port: 0xfe00_0000, data: UnsafeRawBufferPointer(rebasing: b[1..<2]))
        }
        #expect(out.text == "A\n")
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { bus.read(port: 0xfe00_1000, data: $0) }
        #expect(v == .max && bus.unclaimedAccesses == 1)
    }

    @Test func unclaimedPortsReadAllOnesAndAreCounted() {
        let bus = IOBus()
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { bus.read(port: 0x80, data: $0) }
        #expect(v == 0xffff_ffff)
        #expect(bus.unclaimedAccesses == 1)
    }
}
