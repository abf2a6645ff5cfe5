import CKVM
import Foundation
import Synchronization

/// Errors from assembling or operating a VM, by phase.
public enum MachineError: Error, CustomStringConvertible {
    case kvm(KVMError)
    case memory(GuestMemoryError)
    case boot(BootError)
    case state(StateCodingError)
    case invalidConfiguration(String)
    /// The operation needs the VM paused (or not yet started).
    case notPaused(String)
    case restoreMismatch(String)

    public var description: String {
        switch self {
        case let .kvm(e): return e.description
        case let .memory(e): return e.description
        case let .boot(e): return e.description
        case let .state(e): return e.description
        case let .invalidConfiguration(why): return "invalid VM configuration: \(why)"
        case let .notPaused(op): return "\(op) needs the VM paused"
        case let .restoreMismatch(why): return "cannot restore: \(why)"
        }
    }
}

/// One virtual machine: KVM VM, guest memory, vCPU threads, devices. Either booted from a
/// kernel (`init(configuration:)`) or created empty to receive a saved state and memory
/// (`init(restoring:)`). See design.md "Core".
public final class Machine: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var memorySize: UInt64
        /// vCPUs, 1…`Machine.maximumVCPUs`, each on its own host thread. vCPU 0 boots; without
        /// an in-kernel irqchip the others wait for the guest's VCPU_START (protocol.md §2.10),
        /// with one KVM runs INIT/SIPI for them (the standard path of foreign guests).
        public var vcpuCount = 1
        public var kernel: [UInt8]
        public var commandLine: String
        /// In-kernel PIC/IOAPIC/LAPIC. Off by default: the built-in guest uses no
        /// interrupts, and without an irqchip `hlt` exits to the VMM.
        public var inKernelIRQChip: Bool
        /// Use KVM's dirty ring (this many entries per vCPU, a power of two) as the KVM
        /// dirty source instead of the bitmap. Off by default: unreliable on PVM hosts.
        public var kvmDirtyRingEntries: UInt32?
        /// Advertise PVM native execution to the guest when the host is PVM (§1.6). Off
        /// only for measurements: the same guest, emulated.
        public var allowNativeExecution = true
        /// Give the VM a PV network device with this MAC address (protocol.md §5). Its frames
        /// go nowhere until a backend (pvmigrate's TAP) takes them from `Machine.net`.
        public var netMAC: MACAddress?
        /// Map guest memory copy-on-write from this file at this offset instead of
        /// allocating it (restoring a mapped snapshot, protocol.md §6.4).
        /// `dataPages`: the pages the file holds data for (its index).
        public var memoryFile: (descriptor: Int32, offset: UInt64, dataPages: PageBitmap)?
        public var console: ConsoleSink
        public var log: @Sendable (String) -> Void

        public init(memorySize: UInt64, kernel: [UInt8], commandLine: String = "", inKernelIRQChip: Bool = false,
                    kvmDirtyRingEntries: UInt32? = nil,
                    console: ConsoleSink, log: @escaping @Sendable (String) -> Void = { _ in }) {
            self.memorySize = memorySize; self.kernel = kernel; self.commandLine = commandLine
            self.inKernelIRQChip = inKernelIRQChip; self.kvmDirtyRingEntries = kvmDirtyRingEntries
            self.console = console; self.log = log
        }
    }

    public let hypervisor: Hypervisor
    public let vm: VirtualMachine
    public let memory: GuestMemory
    public let bus = IOBus()
    /// Memory-mapped I/O. No devices yet (a PVM-native guest cannot use MMIO); unclaimed
    /// accesses read as all ones and are counted.
    public let mmio = MMIOBus()
    public let serial: SerialPort
    /// The PV interface (protocol.md §2): hypercalls, control page, dirty ring, balloon.
    public let pv: PVInterface
    /// The PV NIC, when the configuration asked for one (`pv.net`).
    public var net: PVNet? { pv.net }
    public let vcpus: [VCPUThread]
    /// The most vCPUs a VM may have (the built-in guest's limit too).
    public static let maximumVCPUs = 8
    /// The host's KVM is PVM (a software KVM; platform-facts.md).
    public let isPVMHost: Bool
    private let exitState = Locked<VMExit?>(nil)
    /// The vCPU threads, for the exit and VCPU_START handlers (set once, after creation).
    private let peers = Locked<[VCPUThread]>([])
    let manualProtectEnabled = Locked(false)
    let throttle = Locked(ThrottleState())
    /// KVM's dirty ring, when the configuration enabled it.
    let dirtyRing: DirtyRingCollector?

    /// Builds a VM and loads `configuration.kernel` by the PVH protocol; call `start()` to run.
    public convenience init(configuration: Configuration) throws(MachineError) {
        try self.init(configuration: configuration, boot: true)
    }

    /// Builds an empty VM of the same shape, to `restore(_:)` a saved state into after its
    /// memory has been filled (e.g. `memory.copyContents(from:)`).
    public convenience init(restoring configuration: Configuration) throws(MachineError) {
        try self.init(configuration: configuration, boot: false)
        // Nothing moves frames into memory that is still arriving: the NIC waits for start().
        net?.setQuiesced(true)
    }

    private init(configuration c: Configuration, boot: Bool) throws(MachineError) {
        do {
            hypervisor = try Hypervisor()
            vm = try hypervisor.makeVirtualMachine()
            if hypervisor.capability(KVM_CAP_SET_TSS_ADDR) > 0 { try vm.setTSSAddress(0xfffb_d000) }
            if c.inKernelIRQChip { try vm.createIRQChip() }
            do throws(GuestMemoryError) {
                if let f = c.memoryFile {
                    memory = try GuestMemory(size: c.memorySize, mappingFile: f.descriptor, offset: f.offset,
                                             dataPages: f.dataPages)
                } else {
                    memory = try GuestMemory(size: c.memorySize)
                }
            } catch { throw MachineError.memory(error) }
            for region in memory.regions {
                try vm.setMemorySlot(region.slot, guestAddress: region.range.start, size: region.range.size,
                                     hostAddress: region.host, logDirtyPages: false)
            }
            if let entries = c.kvmDirtyRingEntries {
                let maxBytes = hypervisor.capability(KVM_CAP_DIRTY_LOG_RING)
                guard maxBytes > 0 else { throw MachineError.invalidConfiguration("this host's KVM has no dirty ring") }
                guard entries.nonzeroBitCount == 1, Int(entries) * KVMDirtyRing.entrySize >= 4096,
                      Int(entries) * KVMDirtyRing.entrySize <= maxBytes else {
                    throw MachineError.invalidConfiguration(
                        "dirty ring entries must be a power of two from 256 to \(maxBytes / KVMDirtyRing.entrySize)")
                }
                try vm.enableCapability(KVM_CAP_DIRTY_LOG_RING, UInt64(Int(entries) * KVMDirtyRing.entrySize))
            }
            guard (1...Self.maximumVCPUs).contains(c.vcpuCount) else {
                throw MachineError.invalidConfiguration("\(c.vcpuCount) vCPUs: a VM has 1 to \(Self.maximumVCPUs)")
            }
            var kvmVCPUs: [VCPU] = []
            for id in 0..<c.vcpuCount { kvmVCPUs.append(try vm.makeVCPU(id: UInt32(id))) }
            let vcpu = kvmVCPUs[0]
            dirtyRing = try c.kvmDirtyRingEntries.map { (n) throws(KVMError) in
                DirtyRingCollector(rings: try kvmVCPUs.map { (v) throws(KVMError) in try KVMDirtyRing(vcpu: v, entries: n) })
            }
            isPVMHost = PVM.isHost(vcpu)
            let tscKHz = vcpu.tscKHz() ?? 0
            var features: CPUIDTable.Features = isPVMHost && c.allowNativeExecution ? .pvmNative : []
            if HarvestBarrier.isAvailable { features.insert(.harvestBarrier) }
            if c.netMAC != nil { features.formUnion([.pvNet, .pvNetSleep]) }
            let supported = try hypervisor.supportedCPUID()
            for v in kvmVCPUs {
                try v.setCPUID(CPUIDTable.build(supported: supported, vcpuID: v.id, vcpuCount: UInt32(c.vcpuCount),
                                                features: features, tscKHz: tscKHz))
            }
            var indices = try hypervisor.saveableMSRs()
            if isPVMHost, !indices.contains(PVM.vifMSR) { indices.append(PVM.vifMSR) }
            let stateLayout = VCPUState.Layout(msrIndices: indices, withLAPIC: vm.irqChipCreated,
                                               xsave: hypervisor.capability(KVM_CAP_XSAVE) > 0,
                                               xcrs: hypervisor.capability(KVM_CAP_XCRS) > 0)

            serial = SerialPort(sink: c.console)
            let nic = c.netMAC.map { [memory] in PVNet(memory: memory, mac: $0) }
            pv = PVInterface(memory: memory, vcpuCount: c.vcpuCount, console: c.console, net: nic, log: c.log)
            bus.register(serial, base: SerialPort.base, count: SerialPort.count)
            bus.register(ExitPort(), base: ExitPort.port, count: 4)
            bus.register(pv, base: PVInterface.port, count: 4)

            if boot {
                let info: PVHLoader.BootInfo
                do { info = try PVHLoader.load(image: c.kernel, commandLine: c.commandLine, into: memory) }
                catch { throw MachineError.boot(error) }
                try PVHLoader.prepareBootCPU(vcpu, boot: info)
            }
            let exitState = self.exitState, serial = self.serial, peers = self.peers, pv = self.pv
            var ringFull: (@Sendable () -> Bool)?
            if let ring = dirtyRing {
                let memory = self.memory, vm = self.vm
                ringFull = { ring.ringFull(memory: memory, vm: vm) }
            }
            // The first vCPU to end decides the VM's exit and stops the others (protocol.md §1.4).
            // The vCPU threads' closures (and the NIC's wake-up below) hold `peers` weakly: it
            // holds the threads, so a strong capture would be a cycle that keeps every vCPU, the
            // devices and the guest's memory alive after the Machine is gone (a listener hosting
            // one VM after another, or `bench` running case after case, ran out of memory).
            let onExit: @Sendable (VMExit) -> Void = { [weak peers] exit in
                serial.flush()
                let first = exitState.withLock { (e: inout VMExit?) -> Bool in
                    guard e == nil else { return false }
                    e = exit
                    return true
                }
                if first { peers?.value.forEach { $0.stop() } }
            }
            let heldByKVM = vm.irqChipCreated
            let onStart: @Sendable (VCPUStartRequest, VCPU) -> Void = { [weak peers] request, caller in
                if !Self.startAP(request, caller: caller, threads: peers?.value ?? [], heldByKVM: heldByKVM) {
                    pv.rejectVCPUStart()
                }
            }
            // With an in-kernel irqchip KVM holds the APs until INIT/SIPI (or VCPU_START);
            // without one they wait in the VMM for VCPU_START.
            let apActivity: VCPUThread.Activity = vm.irqChipCreated ? .active : .awaitingStart
            let bus = self.bus, mmio = self.mmio
            let threads = kvmVCPUs.map { v in
                VCPUThread(vcpu: v, bus: bus, mmio: mmio, stateLayout: stateLayout,
                           activity: v.id == 0 ? .active : apActivity, onDirtyRingFull: ringFull,
                           onStartVCPU: onStart, onExit: onExit)
            }
            vcpus = threads
            peers.withLock { $0 = threads }
            // Received frames end a PV SLEEP early when the guest asked (protocol.md §5.5):
            // only on the vCPU that attached the NIC, the one that waits for them — the others
            // (e.g. a throttled dirtying load) keep their sleeps.
            if let nic = pv.net {
                threads.forEach {
                    $0.onNetAttached = { [weak nic] id in nic?.setRXVCPU(id) }
                    $0.onNetSleep = { [weak nic] in nic?.flushBeforeSleep() }
                    $0.onNetWait = { [weak nic, id = $0.vcpu.id] ms, interrupt in
                        nic?.waitForFrames(vcpu: id, milliseconds: ms, interrupt: interrupt) ?? false
                    }
                }
                nic.onWake { [weak nic, weak peers] in
                    guard let index = nic?.rxVCPU, let threads = peers?.value, threads.indices.contains(index) else { return }
                    threads[index].wake()
                }
            }
        } catch let e as MachineError {
            throw e
        } catch let e as KVMError {
            throw .kvm(e)
        } catch {
            throw .invalidConfiguration("\(error)")
        }
    }

    // MARK: Lifecycle

    /// Starts every vCPU thread, the APs first: a VCPU_START from vCPU 0 finds them waiting.
    public func start() {
        net?.setQuiesced(false)
        vcpus.reversed().forEach { $0.start() }
    }

    /// Parks every vCPU outside KVM_RUN with pending I/O completed, flushes the console and
    /// quiesces the PV NIC: from here until `resume()` nothing writes guest memory (§5.8).
    public func pause() {
        vcpus.forEach { $0.pause() }
        net?.setQuiesced(true)
        serial.flush()
    }

    public func resume() {
        net?.setQuiesced(false)
        vcpus.forEach { $0.resume() }
    }

    /// CPU seconds all vCPU threads have used so far (the guest's share of the host's cores).
    public var vcpuCPUSeconds: Double { vcpus.reduce(0) { $0 + $1.cpuSeconds } }

    /// Runs `body` with every vCPU parked, resuming afterwards only those that were running
    /// (a VM paused by someone else stays paused).
    public func withVCPUsPaused<T>(_ body: () throws -> T) rethrows -> T {
        let wereRunning = vcpus.map { !$0.isHeld && $0.state != .created }
        vcpus.forEach { $0.pause() }
        defer { for (t, running) in zip(vcpus, wereRunning) where running { t.resume() } }
        return try body()
    }

    public func stop() { vcpus.forEach { $0.stop() } }

    /// Blocks until the VM exits (the first vCPU to exit decides the reason).
    @discardableResult
    public func waitForExit() -> VMExit {
        vcpus.forEach { _ = $0.waitForExit() }
        return exitState.withLock { $0 } ?? .stopped
    }

    public var exit: VMExit? { exitState.withLock { $0 } }

    /// How the guest is being executed (asks the boot vCPU between two runs).
    public func executionMode() throws(MachineError) -> ExecutionMode { try executionMode(vcpu: 0) }

    /// How vCPU `index` is being executed: each vCPU registers its own VIF page (§1.6).
    public func executionMode(vcpu index: Int) throws(MachineError) -> ExecutionMode {
        guard isPVMHost else { return .hardware }
        do {
            let vif = try vcpus[index].perform { vcpu throws(KVMError) in PVM.registeredVIF(vcpu) }
            return vif == nil ? .emulated : .native
        } catch { throw .kvm(error) }
    }

    /// The guest-physical addresses of the VIF pages the vCPUs have registered (§1.6), one
    /// MSR read per vCPU on its thread (a kick when it runs); empty off a PVM host.
    public func registeredVIFPages() throws(MachineError) -> [GuestPhysicalAddress] {
        guard isPVMHost else { return [] }
        var out: [GuestPhysicalAddress] = []
        for t in vcpus {
            do {
                if let vif = try t.perform({ vcpu throws(KVMError) in PVM.registeredVIF(vcpu) }) {
                    out.append(GuestPhysicalAddress(vif))
                }
            } catch { throw .kvm(error) }
        }
        return out
    }

    /// VCPU_START (protocol.md §2.10), on the calling vCPU's thread: the AP gets the caller's
    /// special registers (mode, paging, segments, descriptor tables) and the requested RIP,
    /// RSP and RDI. False when the target is not waiting to start (in the VMM, or held by
    /// KVM with an in-kernel irqchip) or the caller is not in long mode.
    static func startAP(_ request: VCPUStartRequest, caller: VCPU, threads: [VCPUThread], heldByKVM: Bool) -> Bool {
        let eferLMA: UInt64 = 1 << 10
        // Never the caller itself: its own thread would wait for itself (`perform`).
        guard request.index < threads.count, request.index != Int(caller.id), let sregs = try? caller.specialRegisters(),
              sregs.efer & eferLMA != 0 else { return false }
        var regs = kvm_regs()
        regs.rip = request.rip
        regs.rsp = request.rsp
        regs.rdi = request.rdi
        regs.rflags = 0x2
        return threads[request.index].startAP(sregs: sregs, regs: regs, heldByKVM: heldByKVM)
    }

    // MARK: State

    private var isQuiescent: Bool {
        vcpus.allSatisfy {
            switch $0.state { case .paused, .created, .exited: return true; case .running: return false }
        }
    }

    /// The complete CPU/platform state: every `StateSaving` component's. The VM must be
    /// paused (or not started).
    public func saveState() throws(MachineError) -> MachineState { try state(withNIC: true) }

    /// The state `saveState` would save, without the PV NIC's section (its few ring indices
    /// need the NIC quiesced): for timing the pause's state save before the pause (issue 11,
    /// `DowntimePredictor.stateSave`). Call it with the vCPUs parked (`withVCPUsPaused`); it
    /// changes nothing, and the state is for measuring, never for restoring.
    public func stateForTiming() throws(MachineError) -> MachineState { try state(withNIC: false) }

    private func state(withNIC: Bool) throws(MachineError) -> MachineState {
        guard isQuiescent else { throw .notPaused("saving state") }
        // A NIC still moving frames would make its indices disagree with memory (§5.8).
        if withNIC, let net, !net.isQuiesced { throw .notPaused("saving the PV NIC's state") }
        return MachineState(memorySize: memory.size,
                            vcpus: try vcpus.map { (t) throws(MachineError) in try t.saveState() },
                            platform: try vm.saveState(), pv: pv.saveState(), serial: serial.saveState(),
                            net: withNIC ? net?.saveState() : nil)
    }

    /// Loads a saved state (memory must already hold the guest's pages) into each component,
    /// in the order of protocol.md §1.8: the VM's irqchip and clock, the vCPUs, the PV
    /// interface, the serial port, the PV NIC. Returns the MSRs the kernel refused, for the caller to report.
    @discardableResult
    public func restore(_ state: MachineState) throws(MachineError) -> [UInt32] {
        guard isQuiescent else { throw .notPaused("restoring state") }
        guard state.memorySize == memory.size else {
            throw .restoreMismatch("the state is for \(state.memorySize >> 20) MiB of memory, this VM has \(memory.size >> 20) MiB")
        }
        guard state.vcpus.count == vcpus.count else {
            throw .restoreMismatch("the state has \(state.vcpus.count) vCPUs, this VM has \(vcpus.count)")
        }
        guard state.vcpus.allSatisfy({ $0.hasLAPIC == vm.irqChipCreated }) else {
            throw .restoreMismatch("in-kernel irqchip presence differs between the state and this VM")
        }
        try vm.restoreState(state.platform)
        var refused: [UInt32] = []
        for (t, s) in zip(vcpus, state.vcpus) {
            try t.restoreState(s)
            refused += t.refusedMSRs.value
        }
        if let pvState = state.pv { try pv.restoreState(pvState) }
        serial.restoreState(state.serial ?? SerialPort.State())
        switch (state.net, net) {
        case let (saved?, nic?):
            try nic.restoreState(saved)
            // A guest paused just before SLEEP must not sleep through its announcement (§5.2).
            if nic.isAttached { vcpus[nic.rxVCPU].wake() }
        case (nil, nil): break
        case (_?, nil):
            throw .restoreMismatch("the saved VM has a PV network device and this one has none "
                + "(restore needs --net; a listener needs --net-bridge)")
        case (nil, _?): throw .restoreMismatch("the saved VM has no PV network device and this one has one")
        }
        return refused
    }
}
