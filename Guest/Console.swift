// The console: serial COM1 (protocol.md §1.4) until the PV control page is
// registered, then the PV CONSOLE hypercall (§2.6).
//
// Serial output goes straight to THR without polling LSR: each port access is
// a VM exit (~27 µs native, ~10 µs emulated), and the contract guarantees the
// transmitter is always empty. Once registered, a whole line is copied into
// the control page's console buffer and printed with one exit. A line is
// built in a fixed buffer (the guest never allocates).

/// Where the PV console is, once REGISTER succeeded (0 = use the serial port).
/// Plain globals: one vCPU, no interrupts.
var pvConsolePage: UInt = 0
var pvConsolePort: UInt16 = 0

enum ConsoleRoute {
    /// Sends every later line through CONSOLE on `port`, via `control`'s buffer.
    static func usePV(control: ControlPage, port: UInt16) {
        pvConsolePort = port
        pvConsolePage = UInt(bitPattern: control.base)
    }
}

/// One console line under construction. Only one exists at a time: they all
/// share the static buffer in entry.S.
struct ConsoleLine {
    static let port: UInt16 = 0x3f8
    /// Bytes of text per line; longer lines are truncated.
    static let capacity = 240

    private let buffer: UnsafeMutablePointer<UInt8>
    private var length = 0

    init(_ text: StaticString = "") {
        buffer = pvguest_line_buffer()
        append(text)
    }

    mutating func append(byte: UInt8) {
        guard length < Self.capacity else { return }
        buffer[length] = byte
        length += 1
    }

    mutating func append(_ text: StaticString) {
        append(bytes: text.utf8Start, count: text.utf8CodeUnitCount)
    }

    mutating func append(bytes: UnsafePointer<UInt8>, count: Int) {
        var index = 0
        while index < count {
            append(byte: bytes[index])
            index += 1
        }
    }

    mutating func append(decimal value: UInt64) {
        var divisor: UInt64 = 1
        while value / divisor >= 10 { divisor &*= 10 }
        while divisor > 0 {
            append(byte: 0x30 &+ UInt8(truncatingIfNeeded: (value / divisor) % 10))
            divisor /= 10
        }
    }

    mutating func append(hex value: UInt64) {
        append("0x")
        var shift = 60
        while shift > 0 && (value >> UInt64(shift)) == 0 { shift -= 4 }
        while shift >= 0 {
            let nibble = UInt8(truncatingIfNeeded: (value >> UInt64(shift)) & 0xf)
            append(byte: nibble < 10 ? 0x30 &+ nibble : 0x61 &+ nibble &- 10)
            shift -= 4
        }
    }

    /// Writes the line and a newline to the console.
    func emit() {
        if pvConsolePage != 0,
           let console = UnsafeMutablePointer<UInt8>(bitPattern: pvConsolePage + UInt(ControlPage.consoleOffset)) {
            // Sound: the control page is registered RAM; length + 1 <= capacity + 1 < 1024.
            var index = 0
            while index < length {
                console[index] = buffer[index]
                index += 1
            }
            console[length] = 0x0a
            CPU.compilerBarrier()
            CPU.outl(pvConsolePort, PVInterface.opConsole | (UInt32(length + 1) << 12))
            return
        }
        var index = 0
        while index < length {
            CPU.outb(Self.port, buffer[index])
            index += 1
        }
        CPU.outb(Self.port, 0x0a)
    }
}

enum Console {
    /// Prints "pvguest: <text>".
    static func log(_ text: StaticString) {
        var line = ConsoleLine("pvguest: ")
        line.append(text)
        line.emit()
    }
}

/// Prints "pvguest: panic: <reason>" and exits with status 1 (protocol.md §1.7).
func panic(_ reason: StaticString) -> Never {
    var line = ConsoleLine("pvguest: panic: ")
    line.append(reason)
    panic(line)
}

/// Emits a panic line that the caller built (starting "pvguest: panic: ").
func panic(_ line: ConsoleLine) -> Never {
    line.emit()
    Exit.now(Exit.panic)
}

/// CPU exception entry from entry.S's IDT stubs.
@_cdecl("pvguest_exception")
func exceptionHandler(vector: UInt64, errorCode: UInt64, rip: UInt64, cr2: UInt64) {
    var line = ConsoleLine("pvguest: panic: exception ")
    line.append(decimal: vector)
    line.append(" (error ")
    line.append(hex: errorCode)
    line.append(", rip ")
    line.append(hex: rip)
    line.append(", cr2 ")
    line.append(hex: cr2)
    line.append(")")
    panic(line)
}
