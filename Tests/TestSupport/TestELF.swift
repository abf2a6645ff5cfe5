import Core
import Foundation

/// Builds small ELF files for loader tests and for a minimal foreign PVH guest.
public struct TestELF {
    public struct Load {
        public var address: UInt64
        public var bytes: [UInt8]
        public var memorySize: UInt64
        public init(address: UInt64, bytes: [UInt8], memorySize: UInt64) {
            self.address = address; self.bytes = bytes; self.memorySize = memorySize
        }
    }

    public var is64Bit = false
    public var machine: UInt16 = 3
    public var loads: [Load] = []
    /// The PVH entry; nil leaves the note out.
    public var pvhEntry: UInt32? = 0x10_0000

    public init(is64Bit: Bool = false) {
        self.is64Bit = is64Bit
        machine = is64Bit ? 62 : 3
    }

    /// A 32-bit PVH guest that is not PVM-aware: prints "OK\n" on COM1 and halts.
    public static func helloGuest() -> [UInt8] {
        let code: [UInt8] = [
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xb0, 0x4f, 0xee,       // mov al, 'O'; out dx, al
            0xb0, 0x4b, 0xee,       // mov al, 'K'; out dx, al
            0xb0, 0x0a, 0xee,       // mov al, '\n'; out dx, al
            0xf4,                   // hlt
        ]
        var elf = TestELF()
        elf.loads = [Load(address: 0x10_0000, bytes: code, memorySize: 0x1000)]
        return elf.build()
    }

    public func build() -> [UInt8] {
        let ehSize = is64Bit ? 64 : 52, phSize = is64Bit ? 56 : 32
        let phCount = loads.count + (pvhEntry == nil ? 0 : 1)
        var out = [UInt8](repeating: 0, count: ehSize + phSize * phCount)
        var note: [UInt8] = []
        if let pvhEntry {
            note += le(4, 4) + le(4, 4) + le(18, 4) + Array("Xen\0".utf8) + le(UInt64(pvhEntry), 4)
        }
        var segments: [(type: UInt32, offset: Int, fileSize: Int, address: UInt64, memorySize: UInt64)] = []
        for l in loads {
            segments.append((1, out.count, l.bytes.count, l.address, l.memorySize))
            out += l.bytes
        }
        if !note.isEmpty {
            segments.append((4, out.count, note.count, 0, UInt64(note.count)))
            out += note
        }
        out.replaceSubrange(0..<16, with: [0x7f, 0x45, 0x4c, 0x46, is64Bit ? 2 : 1, 1, 1] + [UInt8](repeating: 0, count: 9))
        set(&out, 16, 2, 2) // ET_EXEC
        set(&out, 18, UInt64(machine), 2)
        set(&out, 20, 1, 4)
        if is64Bit {
            set(&out, 32, UInt64(ehSize), 8); set(&out, 52, UInt64(ehSize), 2)
            set(&out, 54, UInt64(phSize), 2); set(&out, 56, UInt64(phCount), 2)
        } else {
            set(&out, 28, UInt64(ehSize), 4); set(&out, 40, UInt64(ehSize), 2)
            set(&out, 42, UInt64(phSize), 2); set(&out, 44, UInt64(phCount), 2)
        }
        for (i, s) in segments.enumerated() {
            let h = ehSize + i * phSize
            set(&out, h, UInt64(s.type), 4)
            if is64Bit {
                set(&out, h + 8, UInt64(s.offset), 8); set(&out, h + 16, s.address, 8); set(&out, h + 24, s.address, 8)
                set(&out, h + 32, UInt64(s.fileSize), 8); set(&out, h + 40, s.memorySize, 8)
            } else {
                set(&out, h + 4, UInt64(s.offset), 4); set(&out, h + 8, s.address, 4); set(&out, h + 12, s.address, 4)
                set(&out, h + 16, UInt64(s.fileSize), 4); set(&out, h + 20, s.memorySize, 4)
            }
        }
        return out
    }

    private func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    private func set(_ b: inout [UInt8], _ at: Int, _ v: UInt64, _ n: Int) {
        for i in 0..<n { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}

/// The /dev/kvm gate for tests that need the real KVM: they skip only when it is absent,
/// and say so loudly on standard error.
public enum KVMGate {
    public static let present: Bool = {
        let present = Hypervisor.isPresent()
        if !present {
            FileHandle.standardError.write(Data("""
                \n*** WARNING: /dev/kvm is absent: every test that needs the real KVM is SKIPPED. ***
                *** These results do not cover the VMM. Run on a host with KVM (or PVM).       ***\n\n
                """.utf8))
        }
        return present
    }()
}

/// Collects console output and lets a test wait for a line.
public final class WaitableConsole: ConsoleSink, @unchecked Sendable {
    private let condition = NSCondition()
    private var bytes: [UInt8] = []

    public init() {}

    public func console(_ b: [UInt8]) {
        condition.withLock {
            bytes += b
            condition.broadcast()
        }
    }

    public var text: String { condition.withLock { String(decoding: bytes, as: UTF8.self) } }

    /// Waits until the output contains `needle`; false on timeout.
    public func wait(for needle: String, timeout: TimeInterval = Wait.hangBound) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while !String(decoding: bytes, as: UTF8.self).contains(needle) {
                if !condition.wait(until: deadline) { return String(decoding: bytes, as: UTF8.self).contains(needle) }
            }
            return true
        }
    }
}
