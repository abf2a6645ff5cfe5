import Core
import Foundation
import Migrate

extension VMHost {
    // MARK: save

    /// `save` (protocol.md §4, §6): a migration to a file, run by the VM's own process. Shares
    /// the one-migration-at-a-time slot with `migrate`, so `status` shows it and `cancel`
    /// stops it (the VM then keeps running, and no file is left under the name).
    func save(_ parsed: SaveRequest, _ reply: Reply) {
        let sender = MigrationSender(machine: machine, name: name, kernelSHA256: kernelSHA256, options: parsed.options)
        let destination = "file \(parsed.path)"
        let refusal = condition.withLock { () -> String? in
            if hasEndedLocked || machine.exit != nil { return "VM \(name) has ended: there is nothing to save" }
            if let m = migration {
                return "VM \(name) is already migrating to \(m.destination); wait for it, or stop it with `pvmigrate cancel \(name)`"
            }
            if unresolved != nil {
                return "VM \(name) is paused: the outcome of its migration is not known yet; see `pvmigrate recover \(name)`"
            }
            migration = Migration(sender: sender, destination: destination, startedAt: Date())
            return nil
        }
        if let refusal { reply.fail(refusal); return }
        do {
            let saved = try sender.save(to: parsed.path, layout: parsed.layout, live: parsed.live, stopAfter: parsed.stop) {
                [self] round in
                condition.withLock { migration?.last = round }
                reply.event(.round(round))
            }
            finishMigration(success: nil)
            reply.ok(saved)
        } catch {
            finishMigration(success: nil)
            reply.fail(error.description)
        }
    }
}
