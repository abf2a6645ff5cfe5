#if canImport(Glibc)
import Glibc
#endif
import Core
import Foundation
import Migrate

// The commands of protocol.md §4, as a VMHost answers them.

extension VMHost {
    // MARK: status

    /// The `status` result.
    func status() -> VMStatus {
        let (migration, ended, unresolved) = condition.withLock { (self.migration, hasEndedLocked, self.unresolved) }
        let state: VMStatus.State
        if ended || machine.exit != nil {
            state = .exited
        } else if unresolved != nil {
            state = .unresolved
        } else if migration != nil {
            state = .migrating
        } else {
            switch machine.vcpus[0].state {
            case .running: state = .running
            case .paused, .created: state = .paused
            case .exited: state = .exited
            }
        }
        return VMStatus(
            name: name, state: state, memoryBytes: machine.memory.size, execution: execution(),
            uptimeSeconds: (Date().timeIntervalSince(startedAt) * 1000).rounded() / 1000, pid: Int(getpid()),
            pv: pvStatus(), vcpus: vcpuStatus(), arrivedFrom: arrivedFrom,
            migration: migration.map { m in
                VMStatus.Migration(destination: m.destination, elapsedSeconds: Date().timeIntervalSince(m.startedAt),
                                   round: m.last.map { $0.round + 1 } ?? 0, remainingPages: m.last?.dirtyPages,
                                   bandwidth: m.last?.bandwidth, dirtyRate: m.last?.dirtyRate,
                                   expectedDowntimeSeconds: m.last?.expectedDowntime)
            },
            unresolved: state == .unresolved ? unresolved.map(unresolvedStatus) : nil,
            nic: machine.net.map(VMStatus.NIC.init))
    }

    private func execution() -> VMStatus.Execution {
        let mode = condition.withLock { cachedExecution } ?? (try? machine.executionMode())
        guard let mode else { return machine.isPVMHost ? .emulated : .hardware }
        // A PVM guest that registered its VIF page stays native; the others may still register.
        if mode != .emulated { condition.withLock { cachedExecution = mode } }
        switch mode {
        case .native: return .native
        case .emulated: return .emulated
        case .hardware: return .hardware
        }
    }

    /// Each vCPU: run state, execution mode (asked of that vCPU), PV counters.
    private func vcpuStatus() -> [VMStatus.VCPU] {
        let counters = machine.pv.snapshot
        let guest = machine.pv.guestCounters?.perVCPU ?? []
        return machine.vcpus.enumerated().map { i, t in
            let state: String
            switch (t.state, t.activity) {
            case (.exited, _): state = "exited"
            case (_, .awaitingStart): state = "awaiting_start"
            case (_, .halted): state = "halted"
            case (.running, _): state = "running"
            case (.paused, _), (.created, _): state = "paused"
            }
            let execution: VMStatus.Execution = switch try? machine.executionMode(vcpu: i) {
            case .native: .native
            case .hardware: .hardware
            default: machine.isPVMHost ? .emulated : .hardware
            }
            let g = i < guest.count ? guest[i] : nil
            return VMStatus.VCPU(index: i, state: state, execution: execution, pagesWritten: g?.pagesWritten ?? 0,
                                 rate: g?.rate ?? 0, passes: g?.passes ?? 0,
                                 drainedEntries: i < counters.drainedPerVCPU.count ? counters.drainedPerVCPU[i] : 0)
        }
    }

    private func pvStatus() -> VMStatus.PV {
        let counters = machine.pv.snapshot
        let guest = machine.pv.guestCounters
        let selfcheck = switch guest?.selfcheckState ?? 0 {
        case 0: "never"
        case 1: "running"
        case 2: "passed"
        case 3: "failed"
        default: "unknown"
        }
        return VMStatus.PV(registered: counters.registered, pagesWritten: guest?.pagesWritten ?? 0, rate: guest?.rate ?? 0,
                           passes: guest?.passes ?? 0, selfcheckState: selfcheck, selfcheckBad: guest?.selfcheckBad ?? 0,
                           rejected: counters.totalRejected)
    }

    // MARK: stop, cancel

    func stopRequest(_ reply: Reply) {
        stop()
        waitForEnd()
        reply.ok()
    }

    func cancelRequest(_ reply: Reply) {
        let destination = condition.withLock { () -> String? in
            migration?.sender.cancel()
            return migration?.destination
        }
        if destination != nil { reply.ok() } else { reply.fail("VM \(name) is not migrating: nothing to cancel") }
    }

    // MARK: console

    func console(follow: Bool, _ reply: Reply, _ connection: Connection) {
        func send(_ bytes: [UInt8]) -> Bool {
            // Pieces of ≤ 32 KiB split at character boundaries keep every line far below 1 MiB
            // even when escaped.
            var start = 0
            while start < bytes.count {
                var end = min(bytes.count, start + (32 << 10))
                while end < bytes.count, end > start + 1, bytes[end] & 0xc0 == 0x80 { end -= 1 }
                guard reply.event(.console(text: String(decoding: bytes[start..<end], as: UTF8.self))) else {
                    return false
                }
                start = end
            }
            return true
        }
        guard follow else {
            if send(console.recent) { reply.ok() }
            return
        }
        let subscription = console.subscribe()
        connection.track(subscription)
        defer { subscription.cancel() }
        while let bytes = subscription.next() {
            guard send(bytes) else { return }
        }
        reply.ok()
    }

    // MARK: selfcheck

    func selfcheck(_ reply: Reply) {
        guard machine.exit == nil, !hasEnded else { reply.fail("VM \(name) has ended"); return }
        guard let request = machine.pv.requestSelfcheck() else {
            reply.fail("VM \(name)'s guest has not registered the PV interface, so it cannot self-check "
                + "(the built-in guest does; other kernels do not)")
            return
        }
        let deadline = Date(timeIntervalSinceNow: 300)
        while Date() < deadline {
            if let counters = machine.pv.guestCounters, counters.selfcheckDone == request {
                reply.ok(SelfcheckResult(pages: counters.selfcheckPages, bad: counters.selfcheckBad))
                return
            }
            if machine.exit != nil {
                reply.fail("VM \(name) ended before its self-check finished")
                return
            }
            usleep(10_000)
        }
        reply.fail("VM \(name)'s guest did not finish its self-check within 300 s; it checks between pieces of "
            + "its workload — is it paused or stuck? (pvmigrate console \(name))")
    }

    // MARK: migrate

    /// `parsed` was checked as it was decoded (`ControlRequest.parse`).
    func migrate(_ parsed: MigrateRequest, _ reply: Reply) {
        let tls: TLSMode
        var directory = runtime.defaultTLSDirectory
        switch parsed.security {
        case .insecure: tls = .insecure
        case let .tls(given):
            directory = given
            fallthrough
        case .tlsDefault:
            do { tls = .mutual(try TLSFiles(directory: directory, peerNames: PeerNames(server: parsed.peerName))) } catch {
                reply.fail(error.description)
                return
            }
        }
        let destination = parsed.destination.description
        let sender = MigrationSender(machine: machine, name: name, kernelSHA256: kernelSHA256, options: parsed.options)
        let refusal = condition.withLock { () -> String? in
            if hasEndedLocked || machine.exit != nil { return "VM \(name) has ended: there is nothing to migrate" }
            if let m = migration {
                return "VM \(name) is already migrating to \(m.destination); wait for it, or stop it with `pvmigrate cancel \(name)`"
            }
            if let u = unresolved {
                return "VM \(name) is paused: the outcome of its migration to \(u.migration.destination) is not known yet; "
                    + "see `pvmigrate status \(name)` and `pvmigrate recover \(name)`"
            }
            migration = Migration(sender: sender, destination: destination, startedAt: Date())
            return nil
        }
        if let refusal { reply.fail(refusal); return }
        sender.onHandOver = { [self] u in try writeHandOverRecord(u) }
        let telemetry = SenderTelemetry(vm: name, destination: destination, runtime: runtime)
        do {
            let stats = try sender.migrate(to: parsed.destination.host, port: parsed.destination.port, tls: tls) { [self] round in
                condition.withLock {
                    migration?.last = round
                    migration?.bytes += round.wireBytes
                    migration?.pages += round.pages
                }
                reply.event(.round(round))
            }
            recordJob(ended: .success(stats))
            finishMigration(success: (stats, destination))
            telemetry.finished(stats)
            reply.ok(stats)
        } catch {
            if case let .unresolved(u) = error { enterUnresolved(u, sender: sender) }
            recordJob(ended: .failure(error))
            finishMigration(success: nil)
            telemetry.failed(error)
            reply.fail(error.description)
        }
    }
}
