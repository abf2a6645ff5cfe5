import Synchronization

/// The pvmigrate PV port, 0x5650 (protocol.md §1.5). A 32-bit `out` carries an operation in
/// bits 0–11 and its argument in bits 12–31. Version 1 knows HELLO and SLEEP; the control
/// area, dirty ring and balloon (protocol.md §2) extend it.
///
/// Every value is untrusted: unknown operations, bad arguments and accesses of the wrong
/// width are ignored and counted in `rejected`, and the guest continues.
public final class PVPort: PortDevice, Sendable {
    public static let port: UInt16 = 0x5650

    public enum Operation: UInt32 {
        case hello = 0x001
        case sleep = 0x002
    }
    static let maximumSleepMilliseconds: UInt32 = (1 << 20) - 1

    public struct Counters: Sendable, Equatable {
        /// The ABI version the guest announced with HELLO, or nil.
        public var guestVersion: UInt32?
        public var hellos = 0
        public var sleeps = 0
        /// Writes the port refused (unknown op, bad argument, wrong width).
        public var rejected = 0

        public init(guestVersion: UInt32? = nil, hellos: Int = 0, sleeps: Int = 0, rejected: Int = 0) {
            self.guestVersion = guestVersion; self.hellos = hellos; self.sleeps = sleeps; self.rejected = rejected
        }
    }

    private let state = Mutex(Counters())
    private let log: @Sendable (String) -> Void

    public init(log: @escaping @Sendable (String) -> Void = { _ in }) { self.log = log }

    public var counters: Counters { state.withLock { $0 } }

    public func read(port: UInt16, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
    }

    public func write(port: UInt16, data: UnsafeRawBufferPointer) -> IOAction {
        guard data.count == 4 else {
            state.withLock { $0.rejected += 1 }
            return .proceed
        }
        let value = data.loadUnaligned(as: UInt32.self).littleEndian
        let argument = value >> 12
        switch Operation(rawValue: value & 0xfff) {
        case .hello?:
            let first = state.withLock { c -> Bool in
                c.hellos += 1
                defer { c.guestVersion = argument }
                return c.guestVersion == nil
            }
            if first { log("guest is PV-aware (PV ABI v\(argument))") }
            return .proceed
        case .sleep? where argument >= 1 && argument <= Self.maximumSleepMilliseconds:
            state.withLock { $0.sleeps += 1 }
            return .sleep(milliseconds: argument)
        default:
            state.withLock { $0.rejected += 1 }
            return .proceed
        }
    }
}
