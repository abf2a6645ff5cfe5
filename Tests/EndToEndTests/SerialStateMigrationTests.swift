import Core
import Foundation
import Migrate
import Testing
import TestSupport

/// Port I/O as the guest's OUT/IN instructions do it: through the VM's I/O bus (the path a
/// vCPU thread takes on a port-I/O exit), with the vCPUs parked so nothing races the device.
private extension Machine {
    func out(_ port: UInt16, _ value: UInt8) {
        withVCPUsPaused { _ = withUnsafeBytes(of: value) { bus.write(port: port, data: $0) } }
    }

    func inb(_ port: UInt16) -> UInt8 {
        withVCPUsPaused {
            var value: UInt8 = 0
            withUnsafeMutableBytes(of: &value) { bus.read(port: port, data: $0) }
            return value
        }
    }
}

extension EndToEnd.MigrationTests {
    /// The serial port's registers travel in STATE (protocol.md §1.8, section `serial`,
    /// format 2): a UART the guest programmed before the migration reads back the same on
    /// the destination. Before format 2 they were not saved and the destination's port came
    /// up with power-on values (scratch 0, divisor 1).
    @Test func serialPortRegistersSurviveMigration() throws {
        let arrivals = Arrivals()
        let listener = try Self.listener(arrivals)
        defer { listener.close() }
        let (machine, console) = try Self.source("workload=idle")
        let base = SerialPort.base
        // What a driver does: DLAB on, divisor 3 (38400 baud), 8N1, IER, MCR, a scratch byte.
        machine.out(base + 3, 0x80)
        machine.out(base + 0, 0x03)
        machine.out(base + 1, 0x00)
        machine.out(base + 3, 0x03)
        machine.out(base + 1, 0x01)
        machine.out(base + 4, 0x0b)
        machine.out(base + 7, 0x5a)
        let programmed = try machine.withVCPUsPaused { try machine.saveState().serial }
        #expect(programmed == SerialPort.State(interruptEnable: 0x01, lineControl: 0x03, modemControl: 0x0b,
                                               scratch: 0x5a, divisorLow: 0x03, divisorHigh: 0x00))

        _ = try Self.sender(machine).migrate(to: "127.0.0.1", port: listener.port, tls: Self.pki.src)
        #expect(arrivals.wait(count: 1), "no arrival; failures: \(arrivals.failures)")
        let vm = try #require(arrivals.vms.first)
        defer { vm.machine.stop(); vm.machine.waitForExit() }
        let destination = vm.machine
        #expect(destination.inb(base + 7) == 0x5a, "scratch register after the migration")
        #expect(destination.inb(base + 3) == 0x03, "line control after the migration")
        #expect(destination.inb(base + 1) == 0x01, "interrupt enable after the migration")
        #expect(destination.inb(base + 4) == 0x0b, "modem control after the migration")
        destination.out(base + 3, 0x83)
        #expect(destination.inb(base + 0) == 0x03 && destination.inb(base + 1) == 0x00, "divisor latch after the migration")
        destination.out(base + 3, 0x03)
        #expect(Self.isRunning(destination), "the destination stopped: \(console.text.suffix(300))")
    }
}
