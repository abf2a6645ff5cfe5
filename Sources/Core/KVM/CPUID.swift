import CKVM

/// The guest's CPUID table: KVM_GET_SUPPORTED_CPUID plus pvmigrate's discovery leaves
/// (protocol.md §1.5).
public enum CPUIDTable {
    public static let signatureLeaf: UInt32 = 0x4000_0100
    public static let infoLeaf: UInt32 = 0x4000_0101
    /// eax = the VM's vCPU count, ebx = this vCPU's index (§1.5).
    public static let vcpuLeaf: UInt32 = 0x4000_0102
    /// "PvMigrateVMM" as ebx, ecx, edx.
    public static let signature: (UInt32, UInt32, UInt32) = (0x694d_7650, 0x7461_7267, 0x4d4d_5665)
    /// 2: per-vCPU areas and VCPU_START (§2.10).
    public static let interfaceVersion: UInt32 = 2

    public struct Features: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// The host is PVM: the guest may register a VIF page and run natively (§1.6).
        public static let pvmNative = Features(rawValue: 1 << 0)
        /// The host fences every vCPU after each dirty-ring generation bump, so the guest may
        /// log an already-logged page without a fence (§2.3, HarvestBarrier).
        public static let harvestBarrier = Features(rawValue: 1 << 1)
        /// The VM has a PV network device: NET_ATTACH and NET_KICK work (§5).
        public static let pvNet = Features(rawValue: 1 << 8)
        /// With `pvNet`: NET_SLEEP (§5.5) transmits the TX ring and sleeps in one hypercall;
        /// the host accepts a net page of version 3.
        public static let pvNetSleep = Features(rawValue: 1 << 9)
    }

    /// The supported table with pvmigrate's leaves added and per-vCPU APIC IDs set.
    public static func build(supported: [kvm_cpuid_entry2], vcpuID: UInt32, vcpuCount: UInt32 = 1, features: Features,
                             tscKHz: UInt32) -> [kvm_cpuid_entry2] {
        var entries = supported.filter { ![signatureLeaf, infoLeaf, vcpuLeaf].contains($0.function) }
        for i in entries.indices {
            switch entries[i].function {
            case 1: // initial APIC ID in ebx[31:24]
                entries[i].ebx = (entries[i].ebx & 0x00ff_ffff) | (vcpuID << 24)
            case 0xb, 0x1f: // x2APIC ID
                entries[i].edx = vcpuID
            default: break
            }
        }
        entries.append(entry(signatureLeaf, eax: vcpuLeaf, ebx: signature.0, ecx: signature.1, edx: signature.2))
        entries.append(entry(infoLeaf, eax: interfaceVersion, ebx: features.rawValue,
                             ecx: UInt32(PVInterface.port), edx: tscKHz))
        entries.append(entry(vcpuLeaf, eax: vcpuCount, ebx: vcpuID, ecx: 0, edx: 0))
        return entries
    }

    static func entry(_ function: UInt32, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) -> kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function
        e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
        return e
    }
}

/// PVM (Pagetable-based Virtual Machine, a software KVM) detection and its MSRs.
/// See shared/platform-facts.md and protocol.md §1.6.
public enum PVM {
    /// The VIF page registration MSR; not in KVM_GET_MSR_INDEX_LIST, saved explicitly.
    public static let vifMSR: UInt32 = 0x4b56_4d10
    static let identityMSR: UInt32 = 0x4b56_4d11
    static let tscKHzMSR: UInt32 = 0x4b56_4d13
    static let identityValue: UInt64 = 0x4d_5650 // "PVM"
    /// The async-page-fault MSR fails to restore with value 0 on PVM hosts.
    static let asyncPageFaultMSR: UInt32 = 0x4b56_4d06

    /// True when `vcpu` runs on a PVM host (the identity MSR reads "PVM").
    public static func isHost(_ vcpu: VCPU) -> Bool {
        guard let msrs = try? vcpu.readMSRs([identityMSR]), let m = msrs.first else { return false }
        return m.index == identityMSR && m.value == identityValue
    }

    /// The guest's registered VIF page GPA, or nil when none is registered.
    public static func registeredVIF(_ vcpu: VCPU) -> UInt64? {
        guard let m = try? vcpu.readMSRs([vifMSR]).first, m.index == vifMSR else { return nil }
        return vifPage(msrValue: m.value)
    }

    /// The VIF page GPA a value of the VIF MSR registers (its low bits are flags), or nil for none.
    public static func vifPage(msrValue value: UInt64) -> UInt64? {
        let gpa = value & ~0xfff
        return gpa == 0 ? nil : gpa
    }
}

/// How the guest's instructions are being executed.
public enum ExecutionMode: String, Sendable, Codable {
    /// Hardware virtualization (VT-x / AMD-V): everything runs natively.
    case hardware
    /// PVM host, and the guest registered a VIF page: it runs natively.
    case native
    /// PVM host, guest did not ask: KVM's instruction emulator runs it (~3,000× slower).
    case emulated
}
