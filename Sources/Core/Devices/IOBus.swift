/// A device on the port-I/O bus.
public protocol PortDevice: AnyObject, Sendable {
    /// Handles an `in` of `data.count` bytes at `port` (already known to be inside the
    /// device's range); fills `data`.
    func read(port: UInt16, data: UnsafeMutableRawBufferPointer)
    /// Handles an `out`; `data` holds `count` bytes in guest order.
    func write(port: UInt16, data: UnsafeRawBufferPointer) -> IOAction
}

/// What the vCPU loop should do after an I/O access.
public enum IOAction: Sendable, Equatable {
    case proceed
    /// The guest asked to stop with an exit status (protocol.md §1.4, port 0xf4).
    case exit(status: UInt32)
    /// The vCPU should sleep on the host before re-entering (PV SLEEP).
    case sleep(milliseconds: UInt32)
}

/// The port-I/O bus: a sorted set of non-overlapping ranges. Accesses no device claims read
/// as all ones and are counted (protocol.md §1.4). An MMIO bus comes with devices that need one.
public final class IOBus: @unchecked Sendable {
    private struct Entry { let base: UInt16; let count: UInt16; let device: PortDevice }
    private var entries: [Entry] = []
    public private(set) var unclaimedAccesses = 0 // only the vCPU thread updates it

    public init() {}

    public func register(_ device: PortDevice, base: UInt16, count: UInt16) {
        precondition(count > 0 && UInt32(base) + UInt32(count) <= 0x10000, "port range overflows")
        precondition(!entries.contains { base < $0.base &+ $0.count && $0.base < base &+ count },
                     "port range 0x\(String(base, radix: 16)) overlaps a registered device")
        entries.append(Entry(base: base, count: count, device: device))
        entries.sort { $0.base < $1.base }
    }

    private func find(_ port: UInt16) -> PortDevice? {
        entries.first { port >= $0.base && UInt32(port) < UInt32($0.base) + UInt32($0.count) }?.device
    }

    public func read(port: UInt16, data: UnsafeMutableRawBufferPointer) {
        if let d = find(port) { d.read(port: port, data: data) } else {
            unclaimedAccesses += 1
            data.initializeMemory(as: UInt8.self, repeating: 0xff)
        }
    }

    public func write(port: UInt16, data: UnsafeRawBufferPointer) -> IOAction {
        if let d = find(port) { return d.write(port: port, data: data) }
        unclaimedAccesses += 1
        return .proceed
    }
}
