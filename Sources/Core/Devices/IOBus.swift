/// A device on a bus (port I/O or MMIO). Accesses arrive as offsets from the base the
/// device was registered at, so a device does not care where or on which bus it sits.
public protocol BusDevice: AnyObject, Sendable {
    /// Handles a read of `data.count` bytes at `offset` (inside the device's range); fills `data`.
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    /// Handles a write; `data` holds the bytes in guest order.
    func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction
}

/// What the vCPU loop should do after an I/O access.
public enum IOAction: Sendable, Equatable {
    case proceed
    /// The guest asked to stop with an exit status (protocol.md §1.4, port 0xf4).
    case exit(status: UInt32)
    /// The vCPU should sleep on the host before re-entering (PV SLEEP).
    case sleep(milliseconds: UInt32)
    /// PV NET_SLEEP (protocol.md §5.5): transmit what the guest queued, then sleep as `sleep`.
    case netSleep(milliseconds: UInt32)
    /// The guest asked to start another vCPU (PV VCPU_START, protocol.md §2.10).
    case startVCPU(VCPUStartRequest)
    /// The guest attached its PV NIC (NET_ATTACH accepted, protocol.md §5.1): this vCPU is
    /// the one to wake for received frames (§5.5).
    case netAttached
}

/// A validated VCPU_START: vCPU `index` starts at `rip` with `rsp` and `rdi`, in the calling
/// vCPU's mode (protocol.md §2.10).
public struct VCPUStartRequest: Sendable, Equatable {
    public var index: Int
    public var rip: UInt64, rsp: UInt64, rdi: UInt64
    public init(index: Int, rip: UInt64, rsp: UInt64, rdi: UInt64) {
        self.index = index; self.rip = rip; self.rsp = rsp; self.rdi = rdi
    }
}

/// A bus of non-overlapping address ranges: port I/O (16-bit addresses) or MMIO (guest-
/// physical). Accesses no device claims read as all ones and are counted (protocol.md §1.4).
/// pvmigrate has no MMIO devices yet (a PVM-native guest cannot use MMIO), but the bus is
/// there so a stray MMIO access from any guest is answered and counted, never fatal.
public typealias IOBus = Bus<UInt16>
public typealias MMIOBus = Bus<UInt64>

public final class Bus<Address: FixedWidthInteger & UnsignedInteger & Sendable>: @unchecked Sendable {
    private struct Entry { let base: Address; let count: Address; let device: BusDevice }
    private var entries: [Entry] = []
    public private(set) var unclaimedAccesses = 0 // only the vCPU thread updates it

    public init() {}

    public func register(_ device: BusDevice, base: Address, count: Address) {
        precondition(count > 0 && base.addingReportingOverflow(count - 1).overflow == false, "bus range overflows")
        precondition(!entries.contains { base <= $0.base + ($0.count - 1) && $0.base <= base + (count - 1) },
                     "bus range 0x\(String(base, radix: 16)) overlaps a registered device")
        entries.append(Entry(base: base, count: count, device: device))
        entries.sort { $0.base < $1.base }
    }

    private func find(_ address: Address) -> (BusDevice, UInt64)? {
        guard let e = entries.first(where: { address >= $0.base && address - $0.base < $0.count }) else { return nil }
        return (e.device, UInt64(address - e.base))
    }

    public func read(port: Address, data: UnsafeMutableRawBufferPointer) {
        if let (d, offset) = find(port) { d.read(offset: offset, data: data) } else {
            unclaimedAccesses += 1
            data.initializeMemory(as: UInt8.self, repeating: 0xff)
        }
    }

    public func write(port: Address, data: UnsafeRawBufferPointer) -> IOAction {
        if let (d, offset) = find(port) { return d.write(offset: offset, data: data) }
        unclaimedAccesses += 1
        return .proceed
    }
}
