import CKVM
import Foundation
import Posix

/// Why a VM stopped running.
public enum VMExit: Equatable, Sendable, CustomStringConvertible {
    /// The guest wrote `status` to the exit port (protocol.md §1.4).
    case exitStatus(UInt32)
    /// The guest executed `hlt` with interrupts off: it has nothing more to do.
    case halted
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    case shutdown
    /// KVM could not emulate or run the guest (KVM_EXIT_INTERNAL_ERROR, suberror).
    case internalError(UInt32)
    /// VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason).
    case failEntry(UInt64)
    /// An exit pvmigrate does not handle.
    case unhandled(reason: UInt32)
    /// KVM_RUN itself failed.
    case runFailed(KVMError)
    /// The VMM stopped the VM (`Machine.stop()`).
    case stopped
    /// KVM's dirty ring kept filling with nothing to harvest (a PVM failure mode): the VM
    /// was ended rather than spin; do not enable the KVM dirty ring on this host.
    case dirtyRingStuck

    public var isSuccess: Bool { self == .exitStatus(0) || self == .halted || self == .stopped }

    public var description: String {
        switch self {
        case let .exitStatus(s): return "guest exited with status \(s)"
        case .halted: return "guest halted"
        case .shutdown: return "guest triple-faulted (KVM_EXIT_SHUTDOWN)"
        case let .internalError(s):
            return "KVM could not run the guest (internal error, suberror \(s)); on PVM hosts SSE or other unemulated instructions cause this"
        case let .failEntry(r): return "VM entry failed (hardware reason 0x\(String(r, radix: 16)))"
        case let .unhandled(r): return "unhandled KVM exit reason \(r)"
        case let .runFailed(e): return e.description
        case .stopped: return "stopped"
        case .dirtyRingStuck:
            return "KVM's dirty ring kept filling with nothing to harvest (watchdog); the KVM dirty ring is unusable on this host"
        }
    }
}

/// Drives one vCPU on a dedicated thread (KVM_RUN blocks; it must never run on Swift
/// concurrency's cooperative pool). Message-driven: `pause()`, `resume()`, `stop()` and
/// `perform(_:)` post a request, set `immediate_exit` and kick the thread with a signal,
/// so the vCPU leaves KVM_RUN promptly and handles the request between runs.
///
/// Run states: created → running ⇄ paused → exited. State save/restore runs through
/// `perform` on the vCPU thread (or directly while the thread is not started).
public final class VCPUThread: @unchecked Sendable {
    public enum RunState: Equatable, Sendable { case created, running, paused, exited(VMExit) }

    /// What the guest made of this vCPU (saved with its state, protocol.md §1.8 tag 12). A vCPU
    /// that is not `.active` stays parked without holding the others back; it still pauses,
    /// saves and restores with them.
    public enum Activity: UInt32, Sendable {
        /// Runs guest code.
        case active = 0
        /// An application processor the guest has not started yet (VCPU_START, §2.10).
        case awaitingStart = 1
        /// An application processor that executed `hlt` with nothing to wake it (§1.4).
        case halted = 2
    }

    public let vcpu: VCPU
    private let bus: IOBus
    private let mmio: MMIOBus
    private let condition = NSCondition()
    private var wakePending = false // guarded by `condition`
    /// `waitForExit()` waits here, not on `condition`: a waiter that stays for the VM's whole
    /// life would otherwise be woken (and take the lock) at every broadcast of the run loop,
    /// a PV wake-up or a kick — a thread ping-pong on every NIC round trip.
    private let exitCondition = NSCondition()
    private var exitValue: VMExit? // guarded by `exitCondition`
    // Guarded by `condition`:
    private var runState: RunState = .created
    private var pauseRequested = false
    private var stopRequested = false
    private var requests: [() -> Void] = []
    private var threadHandle: UInt?
    /// The vCPU thread's CPU-time clock (pthread_getcpuclockid), set when the thread starts.
    private var cpuClock: clockid_t?
    private var activityValue: Activity
    /// vCPU thread only: the last exit was I/O that KVM completes on the next KVM_RUN.
    private var ioPending = false
    private let onExit: @Sendable (VMExit) -> Void
    /// Harvests the KVM dirty ring on KVM_EXIT_DIRTY_RING_FULL; false: give up (watchdog).
    private let onDirtyRingFull: (@Sendable () -> Bool)?
    /// Starts another vCPU on the guest's request (VCPU_START); called on this vCPU's thread.
    private let onStartVCPU: (@Sendable (VCPUStartRequest, VCPU) -> Void)?
    /// This vCPU attached the PV NIC (NET_ATTACH); called on this vCPU's thread.
    var onNetAttached: (@Sendable (UInt32) -> Void)?
    /// The guest issued NET_SLEEP: transmit its TX ring before sleeping (§5.5); this vCPU's thread.
    var onNetSleep: (@Sendable () -> Void)?
    /// The guest sleeps in NET_SLEEP: wait for frames on the host's NIC backend for up to the
    /// given milliseconds or until the given eventfd (this thread's `interrupt`) is readable;
    /// false if it did not wait (then the thread sleeps on its condition). A wait that the
    /// eventfd ended resets it (`TapReceiver.vcpuWait`). This vCPU's thread.
    var onNetWait: (@Sendable (Int32, Int32) -> Bool)?
    /// Readable when something needs this thread while it waits in `onNetWait`: a request,
    /// pause, stop or wake (`kickLocked`, `wake`). Created at the first such wait.
    private var interrupt: FileDescriptor?
    /// The thread waits in `onNetWait`: kicks and wakes write `interrupt`. Guarded by `condition`.
    private var inNetWait = false

    /// What this vCPU's saved state holds (VCPUThread+State.swift).
    let stateLayout: VCPUState.Layout
    /// The MSRs the kernel refused at the last `restoreState`, for the caller to report.
    public let refusedMSRs = Locked<[UInt32]>([])

    init(vcpu: VCPU, bus: IOBus, mmio: MMIOBus, stateLayout: VCPUState.Layout, activity: Activity = .active,
         onDirtyRingFull: (@Sendable () -> Bool)? = nil, onStartVCPU: (@Sendable (VCPUStartRequest, VCPU) -> Void)? = nil,
         onExit: @escaping @Sendable (VMExit) -> Void) {
        self.vcpu = vcpu
        self.activityValue = activity
        self.onStartVCPU = onStartVCPU
        self.stateLayout = stateLayout
        self.bus = bus
        self.mmio = mmio
        self.onDirtyRingFull = onDirtyRingFull
        self.onExit = onExit
    }

    public var state: RunState { condition.withLock { runState } }

    /// The boot vCPU (index 0): its `hlt` ends the VM; an AP's parks the AP.
    public var isBootProcessor: Bool { vcpu.id == 0 }

    public var activity: Activity { condition.withLock { activityValue } }

    /// The VMM holds this vCPU paused (`pause()` without a `resume()` yet).
    public var isHeld: Bool { condition.withLock { pauseRequested } }

    /// Sets the activity (a restore, or the VMM starting an AP); wakes the thread.
    func setActivity(_ a: Activity) {
        condition.withLock {
            activityValue = a
            condition.broadcast()
        }
    }

    /// Starts an AP that is waiting for VCPU_START: loads the registers, then lets it run.
    /// False when the vCPU is not waiting (already started, halted or exited).
    ///
    /// With an in-kernel irqchip the AP is not waiting in the VMM but held by KVM (mp_state
    /// UNINITIALIZED or INIT_RECEIVED, until INIT/SIPI): then the registers are loaded between
    /// two KVM_RUNs and KVM_SET_MP_STATE(RUNNABLE) releases it (protocol.md §2.10). An AP that
    /// KVM already runs (started by SIPI or by an earlier VCPU_START) is refused.
    func startAP(sregs: kvm_sregs, regs: kvm_regs, heldByKVM: Bool) -> Bool {
        let waiting = condition.withLock {
            (heldByKVM ? activityValue == .active : activityValue == .awaitingStart) && runState != .created
        }
        guard waiting else { return false }
        do {
            let started = try perform { vcpu throws(KVMError) -> Bool in
                if heldByKVM {
                    let held = try vcpu.mpState()
                    guard held == UInt32(KVM_MP_STATE_UNINITIALIZED) || held == UInt32(KVM_MP_STATE_INIT_RECEIVED) else {
                        return false
                    }
                }
                var own = sregs
                // The AP keeps its own APIC base (the caller's carries the BSP flag) and
                // inherits no pending interrupt.
                own.apic_base = try vcpu.specialRegisters().apic_base
                own.interrupt_bitmap = (0, 0, 0, 0)
                try vcpu.setSpecialRegisters(own)
                try vcpu.setRegisters(regs)
                if heldByKVM { try vcpu.setMPState(UInt32(KVM_MP_STATE_RUNNABLE)) }
                return true
            }
            guard started else { return false }
        } catch { return false }
        if !heldByKVM { setActivity(.active) }
        return true
    }

    /// Starts the thread; `paused` starts it parked (for a restored VM awaiting `resume`).
    public func start(paused: Bool = false) {
        _ = ckvm_install_kick_handler()
        condition.withLock {
            precondition(runState == .created, "vCPU \(vcpu.id) started twice")
            pauseRequested = paused
            runState = paused ? .paused : .running
        }
        let thread = Thread { [self] in loop() }
        thread.name = "vcpu\(vcpu.id)"
        thread.stackSize = 1 << 20
        thread.start()
        condition.withLock { while threadHandle == nil { condition.wait() } }
    }

    /// Asks the vCPU to leave KVM_RUN and park; returns when it is parked (or has exited).
    /// A `.paused` state left over from a `resume()` the thread has not acted on yet is
    /// accurate: the thread checks `pauseRequested` under the lock before it runs again.
    public func pause() {
        condition.withLock {
            switch runState { case .created, .exited: return; default: break }
            pauseRequested = true
            kickLocked()
            while case .running = runState { condition.wait() }
        }
    }

    /// Lets a paused vCPU run again; returns once its thread has left the parked state.
    public func resume() {
        condition.withLock {
            pauseRequested = false
            condition.broadcast()
            while case .paused = runState, !pauseRequested, activityValue == .active, threadHandle != nil {
                condition.wait()
            }
        }
    }

    /// Ends the run loop; the VM exits with `.stopped` unless it already exited.
    public func stop() {
        let neverStarted = condition.withLock { () -> Bool in
            if case .created = runState {
                runState = .exited(.stopped)
                condition.broadcast()
                return true
            }
            stopRequested = true
            kickLocked()
            return false
        }
        if neverStarted {
            onExit(.stopped)
            publishExit(.stopped) // wake anyone already in waitForExit()
        }
    }

    /// Blocks until the vCPU has exited.
    public func waitForExit() -> VMExit {
        exitCondition.withLock {
            while true {
                if let exitValue { return exitValue }
                exitCondition.wait()
            }
        }
    }

    private func publishExit(_ exit: VMExit) {
        exitCondition.withLock {
            exitValue = exit
            exitCondition.broadcast()
        }
    }

    /// Runs `body` on the vCPU thread between two KVM_RUNs (or right here when the thread is
    /// not running) and returns its result.
    public func perform<T>(_ body: @escaping (VCPU) throws(KVMError) -> T) throws(KVMError) -> T {
        nonisolated(unsafe) var result: Result<T, KVMError>?
        let queued = condition.withLock { () -> Bool in
            switch runState { case .created, .exited: return false; default: break }
            requests.append { [vcpu] in
                do throws(KVMError) { result = .success(try body(vcpu)) } catch { result = .failure(error) }
            }
            kickLocked()
            condition.broadcast()
            // The vCPU thread serves every queued request, also when it exits meanwhile.
            while result == nil { condition.wait() }
            return true
        }
        guard queued, let result else { return try body(vcpu) } // thread idle: the fd is ours
        return try result.get()
    }

    /// Gets the vCPU thread's attention wherever it is: in KVM_RUN (signal + immediate_exit)
    /// or in a PV SLEEP on the host (the condition).
    private func kickLocked() {
        vcpu.setImmediateExit(true)
        if let threadHandle { _ = ckvm_kick_thread(threadHandle) }
        condition.broadcast()
        interruptNetWaitLocked()
    }

    /// Ends a wait in `onNetWait` (another thread wants this one). Lock held.
    private func interruptNetWaitLocked() {
        guard inNetWait, let interrupt else { return }
        EventCounter.signal(interrupt.rawValue)
    }

    /// CPU seconds (user + system) the vCPU thread has used so far; 0 before it started.
    /// Once the thread has ended its clock is gone (clock_gettime fails) and this is 0 too.
    public var cpuSeconds: Double {
        guard let clock = condition.withLock({ cpuClock }) else { return 0 }
        var t = timespec()
        guard clock_gettime(clock, &t) == 0 else { return 0 }
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    // MARK: The vCPU thread

    private func loop() {
        _ = ckvm_unblock_kick_signal() // the mask is inherited: make sure kicks reach KVM_RUN
        var clock = clockid_t()
        let haveClock = pthread_getcpuclockid(pthread_self(), &clock) == 0
        condition.withLock {
            threadHandle = ckvm_current_thread()
            if haveClock { cpuClock = clock }
            condition.broadcast()
        }
        let exit = runLoop()
        onExit(exit) // before waiters wake, so they see the reason
        condition.lock()
        runState = .exited(exit)
        let pending = requests
        requests.removeAll()
        condition.unlock()
        pending.forEach { $0() } // queued before the exit: serve them, the fd is idle now
        condition.withLock { condition.broadcast() }
        publishExit(exit)
    }

    private func runLoop() -> VMExit {
        while true {
            condition.lock()
            while true {
                if !requests.isEmpty {
                    let pending = requests
                    requests.removeAll()
                    condition.unlock()
                    if ioPending { completePendingIO() }
                    pending.forEach { $0() }
                    condition.lock()
                    condition.broadcast()
                    continue
                }
                if stopRequested { condition.unlock(); return .stopped }
                if pauseRequested || activityValue != .active {
                    if ioPending {
                        condition.unlock()
                        completePendingIO()
                        condition.lock()
                        continue
                    }
                    runState = .paused
                    condition.broadcast()
                    condition.wait()
                    continue
                }
                break
            }
            if runState != .running { // only a change has waiters (resume): not every exit
                runState = .running
                condition.broadcast()
            }
            vcpu.setImmediateExit(false)
            condition.unlock()

            if NetTrace.enabled { NetTrace.mark(.runEntered) }
            let exited: Bool
            do { exited = try vcpu.runOnce() } catch { return .runFailed(error) }
            if !exited { continue } // kicked: look at the requests
            if let exit = handleExit() { return exit }
        }
    }

    /// KVM completes an `in`/`out` (or MMIO) on the next KVM_RUN; with immediate_exit set it
    /// does only that and returns EINTR, leaving registers consistent for a state save.
    private func completePendingIO() {
        vcpu.setImmediateExit(true)
        _ = try? vcpu.runOnce()
        ioPending = false
    }

    /// Handles one exit; returns a VMExit when the VM is done.
    private func handleExit() -> VMExit? {
        let run = vcpu.run
        switch Int32(run.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = run.pointee.io
            let size = Int(io.size), count = Int(io.count)
            guard let data = vcpu.runAreaBytes(offset: Int(io.data_offset), count: size * count) else {
                return .unhandled(reason: UInt32(KVM_EXIT_IO))
            }
            ioPending = true
            for i in 0..<count {
                let chunk = UnsafeMutableRawBufferPointer(rebasing: data[(i * size)..<((i + 1) * size)])
                if io.direction == UInt8(KVM_EXIT_IO_IN) {
                    bus.read(port: io.port, data: chunk)
                    continue
                }
                switch bus.write(port: io.port, data: UnsafeRawBufferPointer(chunk)) {
                case .proceed: break
                case let .exit(status): return .exitStatus(status)
                case let .sleep(ms): sleep(milliseconds: ms)
                case let .netSleep(ms):
                    if NetTrace.enabled { NetTrace.mark(.sleepExit) }
                    onNetSleep?()
                    if NetTrace.enabled { NetTrace.mark(.tapWritten) }
                    netSleep(milliseconds: ms)
                case let .startVCPU(request): onStartVCPU?(request, vcpu)
                case .netAttached: onNetAttached?(vcpu.id)
                }
            }
            return nil
        case KVM_EXIT_MMIO:
            ioPending = true
            let address = run.pointee.mmio.phys_addr
            let length = min(Int(run.pointee.mmio.len), 8)
            // Sound: `data` is the 8-byte array inside kvm_run; `length` is clamped to it.
            return withUnsafeMutableBytes(of: &run.pointee.mmio.data) { raw in
                let data = UnsafeMutableRawBufferPointer(rebasing: raw[0..<length])
                if run.pointee.mmio.is_write == 0 {
                    mmio.read(port: address, data: data)
                    return nil
                }
                if case let .exit(status) = mmio.write(port: address, data: UnsafeRawBufferPointer(data)) {
                    return .exitStatus(status)
                }
                return nil
            }
        case KVM_EXIT_HLT:
            // Without interrupts nothing wakes a halted vCPU: the boot vCPU's hlt ends the VM,
            // an AP's only parks that AP (protocol.md §1.4).
            if isBootProcessor { return .halted }
            setActivity(.halted)
            return nil
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_INTERNAL_ERROR: return .internalError(run.pointee.`internal`.suberror)
        case KVM_EXIT_FAIL_ENTRY: return .failEntry(run.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTR: return nil
        case KVM_EXIT_DIRTY_RING_FULL:
            return onDirtyRingFull?() == true ? nil : .dirtyRingStuck
        default: return .unhandled(reason: run.pointee.exit_reason)
        }
    }

    /// PV SLEEP: wait on the host, waking early for any request so pause stays prompt, and
    /// for a `wake()` (one that came before the sleep ends it at once: no wake-up is lost).
    private func sleep(milliseconds: UInt32) {
        let deadline = Date(timeIntervalSinceNow: Double(milliseconds) / 1000)
        condition.withLock {
            while requests.isEmpty, !pauseRequested, !stopRequested, !wakePending, Date() < deadline {
                _ = condition.wait(until: deadline)
            }
            wakePending = false
        }
    }

    /// NET_SLEEP (§5.5): like `sleep`, but the vCPU that waits for the NIC waits on the NIC's
    /// TAP itself (`onNetWait`) and delivers frames on this thread. Each wait returns on frames,
    /// the interrupt eventfd, a signal or the deadline; then the same conditions as `sleep`'s
    /// decide whether the guest runs again. Falls back to `sleep` when the backend cannot wait.
    private func netSleep(milliseconds: UInt32) {
        guard let onNetWait, let interrupt = interruptDescriptor() else { return sleep(milliseconds: milliseconds) }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(milliseconds) * 1_000_000
        while true {
            let remaining = condition.withLock { () -> Int32? in
                let now = DispatchTime.now().uptimeNanoseconds
                guard requests.isEmpty, !pauseRequested, !stopRequested, !wakePending, now < deadline else {
                    wakePending = false
                    return nil
                }
                inNetWait = true
                return Int32(clamping: (deadline - now + 999_999) / 1_000_000)
            }
            guard let remaining else { return }
            let waited = onNetWait(remaining, interrupt.rawValue)
            condition.withLock { inNetWait = false } // a kick after this point does not signal the eventfd
            // A wait that ended on the interrupt reset it itself (no read(2) on the path from a
            // frame to KVM_RUN); one still set ends the next wait at once, which resets it then.
            if !waited {
                EventCounter.reset(interrupt.rawValue)
                let now = DispatchTime.now().uptimeNanoseconds
                return sleep(milliseconds: UInt32(clamping: now < deadline ? (deadline - now + 999_999) / 1_000_000 : 0))
            }
        }
    }

    /// This thread's interrupt eventfd, created at its first NET_SLEEP wait (nil if that fails:
    /// then it sleeps on the condition as before).
    private func interruptDescriptor() -> FileDescriptor? {
        if let interrupt { return interrupt }
        let fd = ckvm_eventfd()
        guard fd >= 0 else { return nil }
        let made = FileDescriptor(owning: fd)
        condition.withLock { interrupt = made }
        return made
    }

    /// A `wake()` came that no SLEEP has taken yet (tests: which vCPU an RX wake reached).
    var hasPendingWake: Bool { condition.withLock { wakePending } }

    /// Ends the vCPU's current or next PV SLEEP (a device has work for the guest, §5.5).
    public func wake() {
        condition.withLock {
            wakePending = true
            condition.broadcast()
            // From the waiting thread itself (it delivered the frames): it sees wakePending next.
            if ckvm_current_thread() != threadHandle { interruptNetWaitLocked() }
        }
    }
}
