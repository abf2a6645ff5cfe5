import Synchronization

/// Where console output goes: a terminal, a test's buffer, a log.
public protocol ConsoleSink: AnyObject, Sendable {
    /// Called with whole lines (ending in "\n") and, on flush, with a partial last line.
    func console(_ bytes: [UInt8])
}

/// A 16550-style UART at 0x3f8 (protocol.md §1.4): transmit only, no interrupts. LSR always
/// says "transmitter empty" so a guest never has to spin; other registers read back what
/// was written, which is enough for drivers that probe them (e.g. the scratch register).
public final class SerialPort: BusDevice, @unchecked Sendable {
    public static let base: UInt16 = 0x3f8
    public static let count: UInt16 = 8
    static let lineLimit = 4096

    private let sink: ConsoleSink
    private var line: [UInt8] = []              // vCPU thread only, except flush() when paused
    var registers = [UInt8](repeating: 0, count: 8)  // vCPU thread, or paused (Serial+State.swift)
    var divisor: (UInt8, UInt8) = (1, 0)

    public init(sink: ConsoleSink) { self.sink = sink }

    private var dlab: Bool { registers[3] & 0x80 != 0 }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let reg = Int(offset & 7)
        let value: UInt8
        switch reg {
        case 0: value = dlab ? divisor.0 : 0     // no input
        case 1: value = dlab ? divisor.1 : registers[1]
        case 2: value = 0x01                     // IIR: no interrupt pending
        case 5: value = 0x60                     // LSR: THR empty, transmitter idle
        case 6: value = 0xb0                     // MSR: CTS, DSR, DCD
        default: value = registers[reg]
        }
        data.initializeMemory(as: UInt8.self, repeating: 0)
        if !data.isEmpty { data[0] = value }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        guard let byte = data.first else { return .proceed }
        let reg = Int(offset & 7)
        switch reg {
        case 0 where dlab: divisor.0 = byte
        case 1 where dlab: divisor.1 = byte
        case 0:
            line.append(byte)
            if byte == 0x0a || line.count >= Self.lineLimit { flush() }
        default: registers[reg] = byte
        }
        return .proceed
    }

    /// Hands any partial line to the sink (at VM exit or pause).
    public func flush() {
        guard !line.isEmpty else { return }
        let out = line
        line.removeAll(keepingCapacity: true)
        sink.console(out)
    }
}

/// Port 0xf4: a 32-bit write ends the VM with that exit status (QEMU's isa-debug-exit port).
public final class ExitPort: BusDevice {
    public static let port: UInt16 = 0xf4
    public init() {}
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0xff)
    }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        var status: UInt32 = 0
        for (i, b) in data.prefix(4).enumerated() { status |= UInt32(b) << (8 * i) }
        return .exit(status: status)
    }
}

/// A ConsoleSink that keeps everything in memory (tests, the control socket's console buffer).
public final class ConsoleBuffer: ConsoleSink, Sendable {
    private let storage = Mutex<[UInt8]>([])
    public init() {}
    public func console(_ bytes: [UInt8]) { storage.withLock { $0 += bytes } }
    public var text: String { storage.withLock { String(decoding: $0, as: UTF8.self) } }
    public var lines: [String] { text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }
}
