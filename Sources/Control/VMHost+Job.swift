import Core
import Foundation
import Migrate

// The `job` command (protocol.md §4.1): the VM's migration job, in progress or last ended.

extension VMHost {
    func job() -> MigrationJob {
        let (migration, unresolved, last) = condition.withLock { (self.migration, self.unresolved, lastJob) }
        if let u = unresolved, var job = last {
            job.phase = .unresolved
            job.error = u.lastError ?? job.error
            return job
        }
        guard let m = migration else { return last ?? MigrationJob(phase: .none) }
        let phase: MigrationJob.Phase
        switch m.sender.commitPhase {
        case .awaitPrepared?, .handingOver?, .awaitDone?, .handedOver?: phase = .commit
        case .transferring?: phase = .stopAndCopy
        case nil, .resumed?, .unresolved?:
            // The commit machine exists from stop-and-copy on; before it, a paused guest is
            // being stopped for the final round.
            phase = m.last == nil ? .setup : (machine.vcpus[0].state == .paused ? .stopAndCopy : .precopy)
        }
        return MigrationJob(phase: phase, destination: m.destination, elapsedSeconds: Date().timeIntervalSince(m.startedAt),
                            round: m.last.map { $0.round + 1 } ?? 0, bytes: m.bytes, pages: m.pages,
                            remainingPages: m.last?.dirtyPages, expectedDowntimeSeconds: m.last?.expectedDowntime,
                            bandwidth: m.last?.bandwidth)
    }

    /// Records how the migration in progress ended, for `job` once it is over.
    func recordJob(ended: Result<MigrationStats, MigrationError>) {
        condition.withLock {
            guard let m = migration else { return }
            var job = MigrationJob(phase: .completed, destination: m.destination,
                                   elapsedSeconds: Date().timeIntervalSince(m.startedAt),
                                   round: m.last.map { $0.round + 1 } ?? 0, bytes: m.bytes, pages: m.pages)
            switch ended {
            case let .success(stats):
                job.round = stats.rounds.count
                job.bytes = stats.wireBytes
                job.pages = stats.rounds.reduce(0) { $0 + $1.pages }
                job.downtimeSeconds = stats.downtimeSeconds
                job.predictedDowntimeSeconds = stats.predictedDowntimeSeconds
                job.elapsedSeconds = stats.totalSeconds
            case let .failure(error):
                switch error {
                case .cancelled: job.phase = .cancelled
                case .unresolved: job.phase = .unresolved
                default: job.phase = .failed
                }
                job.error = error.description
            }
            lastJob = job
        }
    }
}
