/// The serial port's part of a saved machine (protocol.md §1.8, section `serial`): the
/// registers a guest can write and read back. LSR, MSR and IIR are constants of this UART
/// and the receive buffer is always empty, so they do not travel; a partial console line
/// was flushed when the VM paused.
extension SerialPort: StateSaving {
    public struct State: StateSection {
        public static let tag: UInt16 = 5
        public static let name = "serial"
        static let size = 8

        /// Interrupt enable, line control (bit 7: DLAB), modem control, scratch.
        public var interruptEnable: UInt8
        public var lineControl: UInt8
        public var modemControl: UInt8
        public var scratch: UInt8
        /// The baud-rate divisor latch, low and high byte.
        public var divisorLow: UInt8
        public var divisorHigh: UInt8

        public init(interruptEnable: UInt8 = 0, lineControl: UInt8 = 0, modemControl: UInt8 = 0, scratch: UInt8 = 0,
                    divisorLow: UInt8 = 1, divisorHigh: UInt8 = 0) {
            self.interruptEnable = interruptEnable; self.lineControl = lineControl; self.modemControl = modemControl
            self.scratch = scratch; self.divisorLow = divisorLow; self.divisorHigh = divisorHigh
        }

        /// `u8 ier, u8 lcr, u8 mcr, u8 scr, u8 dll, u8 dlm, u16 0`.
        public func encoded() -> [UInt8] {
            var w = ByteWriter()
            for byte in [interruptEnable, lineControl, modemControl, scratch, divisorLow, divisorHigh] { w.u8(byte) }
            w.u16(0)
            return w.bytes
        }

        public init(encoded bytes: [UInt8]) throws(StateCodingError) {
            var r = ByteReader(bytes)
            guard bytes.count == Self.size, let ier = r.u8(), let lcr = r.u8(), let mcr = r.u8(), let scr = r.u8(),
                  let dll = r.u8(), let dlm = r.u8(), let reserved = r.u16() else {
                throw .badSectionSize(name: Self.name, expected: Self.size, got: bytes.count)
            }
            guard reserved == 0 else { throw .reservedNotZero("section serial") }
            self.init(interruptEnable: ier, lineControl: lcr, modemControl: mcr, scratch: scr, divisorLow: dll, divisorHigh: dlm)
        }
    }

    public func saveState() -> State {
        State(interruptEnable: registers[1], lineControl: registers[3], modemControl: registers[4],
              scratch: registers[7], divisorLow: divisor.0, divisorHigh: divisor.1)
    }

    public func restoreState(_ state: State) {
        registers[1] = state.interruptEnable
        registers[3] = state.lineControl
        registers[4] = state.modemControl
        registers[7] = state.scratch
        divisor = (state.divisorLow, state.divisorHigh)
    }
}
