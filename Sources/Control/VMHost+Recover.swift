#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Migrate
import Posix

// A migration whose outcome the source does not know (protocol.md §3.6.5): the VM stays
// paused here, `status` says "unresolved", and the host asks the destination (RESOLVE)
// automatically with backoff; `recover` asks again on demand or forces a side.

extension VMHost {
    /// Automatic attempts, and the waits before each (seconds).
    static let resolveBackoff: [Double] = [0.5, 1, 2, 4, 8, 15, 30, 30]

    /// `<runtime>/vms/<name>.handover`: written before GO is sent, removed when the migration
    /// is settled. It tells an operator which destination holds the decision even if this
    /// process is gone.
    var handOverPath: String { runtime.vmsDirectory + "/\(name).handover" }

    /// Written while the guest is paused (between PREPARED and GO), so it is cheap: a temporary
    /// file and a rename, which a crashed process cannot leave half-written, and no fsync — the
    /// record is for this host's operator after the process is gone, and a host that goes down
    /// takes the paused VM with it. (Foundation's `createFile` took 1.8–3.5 ms of 6–10 ms pauses.)
    func writeHandOverRecord(_ u: UnresolvedMigration) throws {
        let record: JSONValue = ["destination": .string(u.destination), "migration_id": .string(u.migrationIDHex),
                                 "since": .double(Date().timeIntervalSince1970)]
        let partial = handOverPath + ".partial"
        do {
            let file = try FileDescriptor.open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
            defer { file.close() }
            try file.writeAll(Array((record.jsonText + "\n").utf8))
        } catch { throw ControlError(.runtimeDirectory, "cannot write \(partial): \(error)") }
        guard rename(partial, handOverPath) == 0 else {
            let why = Errno(errno)
            unlink(partial)
            throw ControlError(.runtimeDirectory, "cannot rename \(partial) to \(handOverPath): \(why)")
        }
    }

    func removeHandOverRecord() { unlink(handOverPath) }

    func enterUnresolved(_ u: UnresolvedMigration, sender: MigrationSender) {
        condition.withLock { unresolved = Unresolved(migration: u, sender: sender) }
        Thread.detachNewThread { [self] in
            for delay in Self.resolveBackoff {
                Thread.sleep(forTimeInterval: delay) // backoff between attempts to reach the destination
                guard condition.withLock({ unresolved != nil }), machine.exit == nil else { return }
                if (try? settle(force: nil)) != nil { return }
            }
        }
    }

    /// Asks the destination (or takes `force`) and applies the answer. Throws when the
    /// destination cannot be asked; the VM then stays paused.
    @discardableResult
    func settle(force: CommitOutcome?) throws -> CommitOutcome {
        guard let u = condition.withLock({ unresolved }) else {
            throw ControlError(.invalidArgument, "VM \(name) has no unresolved migration")
        }
        let outcome: CommitOutcome
        do { outcome = try force ?? u.sender.askOutcome(u.migration) } catch {
            condition.withLock {
                unresolved?.attempts += 1
                unresolved?.lastError = "\(error)"
            }
            throw ControlError(.connection, "cannot ask \(u.migration.destination) for the outcome: \(error)")
        }
        // The destination forgets decisions after its retention (protocol.md §3.6.4): past it,
        // "unknown" may mean "started and forgotten", so it no longer licenses a resume.
        if force == nil, outcome == .unknown, Date().timeIntervalSince(u.since) > OutcomeTable.defaultRetention {
            throw ControlError(.connection, "\(u.migration.destination) no longer remembers migration \(u.migration.migrationIDHex) "
                + "(unresolved since \(u.since), longer than its \(Int(OutcomeTable.defaultRetention / 86_400))-day record): check "
                + "whether VM \(name) runs there, then `pvmigrate recover \(name) --force-stop` or `--force-resume`")
        }
        let settled = condition.withLock { () -> Bool in
            guard unresolved?.migration.migrationID == u.migration.migrationID else { return false }
            unresolved = nil
            lastJob?.phase = outcome == .started ? .completed : .failed
            if outcome == .started {
                var stats = MigrationStats()
                stats.memoryBytes = machine.memory.size
                migrated = (stats, u.migration.destination)
            }
            condition.broadcast()
            return true
        }
        guard settled else { return outcome }
        try? u.sender.resolve(u.migration, force: outcome) // stops (started) or resumes the VM
        removeHandOverRecord()
        return outcome
    }

    /// `recover` (protocol.md §4).
    func recoverRequest(force: RecoverForce?, _ reply: Reply) {
        do {
            let outcome = try settle(force: force?.outcome)
            reply.ok(RecoverResult(outcome: outcome, forced: force != nil))
        } catch {
            reply.fail("\(error)")
        }
    }

    func unresolvedStatus(_ u: Unresolved) -> VMStatus.Unresolved {
        VMStatus.Unresolved(destination: u.migration.destination, migrationID: u.migration.migrationIDHex,
                            sinceSeconds: Date().timeIntervalSince(u.since), attempts: u.attempts, lastError: u.lastError)
    }
}
