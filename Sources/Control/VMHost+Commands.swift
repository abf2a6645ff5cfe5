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
    func status() -> JSONValue {
        let (migration, ended, unresolved) = condition.withLock { (self.migration, hasEndedLocked, self.unresolved) }
        let state: String
        if ended || machine.exit != nil {
            state = "exited"
        } else if unresolved != nil {
            state = "unresolved"
        } else if migration != nil {
            state = "migrating"
        } else {
            switch machine.vcpus[0].state {
            case .running: state = "running"
            case .paused, .created: state = "paused"
            case .exited: state = "exited"
            }
        }
        var result: [String: JSONValue] = [
            "name": .string(name),
            "state": .string(state),
            "memory_bytes": JSONValue(machine.memory.size),
            "execution": .string(executionName()),
            "uptime_s": .double((Date().timeIntervalSince(startedAt) * 1000).rounded() / 1000),
            "pid": JSONValue(Int(getpid())),
            "pv": pvStatus(),
        ]
        if let arrivedFrom { result["arrived_from"] = .string(arrivedFrom) }
        if let u = unresolved, state == "unresolved" { result["unresolved"] = unresolvedStatus(u) }
        if let m = migration {
            var info: [String: JSONValue] = [
                "destination": .string(m.destination),
                "elapsed_s": .double(Date().timeIntervalSince(m.startedAt)),
                "round": JSONValue(m.last.map { $0.round + 1 } ?? 0),
            ]
            if let r = m.last {
                info["remaining_pages"] = JSONValue(r.dirtyPages)
                info["bandwidth"] = .double(r.bandwidth)
                info["dirty_rate"] = .double(r.dirtyRate)
                info["expected_downtime_s"] = .double(r.expectedDowntime)
            }
            result["migration"] = .object(info)
        }
        return .object(result)
    }

    private func executionName() -> String {
        let mode = condition.withLock { cachedExecution } ?? (try? machine.executionMode())
        guard let mode else { return machine.isPVMHost ? "emulated" : "hardware" }
        // A PVM guest that registered its VIF page stays native; the others may still register.
        if mode != .emulated { condition.withLock { cachedExecution = mode } }
        switch mode {
        case .native: return "native"
        case .emulated: return "emulated"
        case .hardware: return "hardware"
        }
    }

    private func pvStatus() -> JSONValue {
        let counters = machine.pv.snapshot
        let guest = machine.pv.guestCounters
        let selfcheck: String
        switch guest?.selfcheckState ?? 0 {
        case 0: selfcheck = "never"
        case 1: selfcheck = "running"
        case 2: selfcheck = "passed"
        case 3: selfcheck = "failed"
        default: selfcheck = "unknown"
        }
        return [
            "registered": .bool(counters.registered),
            "pages_written": JSONValue(guest?.pagesWritten ?? 0),
            "rate": JSONValue(guest?.rate ?? 0),
            "passes": JSONValue(guest?.passes ?? 0),
            "selfcheck_state": .string(selfcheck),
            "selfcheck_bad": JSONValue(guest?.selfcheckBad ?? 0),
            "rejected": JSONValue(counters.totalRejected),
        ]
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

    func console(_ arguments: [String: JSONValue], _ reply: Reply, _ connection: Connection) {
        var follow = false
        if let value = arguments["follow"] {
            guard let flag = value.bool else { reply.fail("console: \"follow\" must be true or false"); return }
            follow = flag
        }
        func send(_ bytes: [UInt8]) -> Bool {
            // Pieces of ≤ 32 KiB split at character boundaries keep every line far below 1 MiB
            // even when escaped.
            var start = 0
            while start < bytes.count {
                var end = min(bytes.count, start + (32 << 10))
                while end < bytes.count, end > start + 1, bytes[end] & 0xc0 == 0x80 { end -= 1 }
                guard reply.event("console", ["text": .string(String(decoding: bytes[start..<end], as: UTF8.self))]) else {
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
                reply.ok(["pages": JSONValue(counters.selfcheckPages), "bad": JSONValue(counters.selfcheckBad)])
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

    func migrate(_ arguments: [String: JSONValue], _ reply: Reply) {
        let parsed: MigrateArguments
        do { parsed = try MigrateArguments(arguments, defaultTLSDirectory: runtime.defaultTLSDirectory) } catch {
            reply.fail("\(error)")
            return
        }
        let tls: TLSMode
        if let directory = parsed.tlsDirectory {
            do { tls = .mutual(try TLSFiles(directory: directory, peerNames: PeerNames(server: parsed.peerName))) } catch {
                reply.fail(error.description)
                return
            }
        } else {
            tls = .insecure
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
        do {
            let stats = try sender.migrate(to: parsed.destination.host, port: parsed.destination.port, tls: tls) { [self] round in
                condition.withLock { migration?.last = round }
                if let data = try? JSONValue(encoding: round) { reply.event("round", data) }
            }
            finishMigration(success: (stats, destination))
            reply.ok((try? JSONValue(encoding: stats)) ?? [:])
        } catch {
            if case let .unresolved(u) = error { enterUnresolved(u, sender: sender) }
            finishMigration(success: nil)
            reply.fail(error.description)
        }
    }
}

/// The `migrate` arguments (protocol.md §4), checked.
struct MigrateArguments {
    static let keys = ["destination", "tls_dir", "insecure", "peer_name", "downtime_ms", "bandwidth", "streams",
                       "compression", "adaptive_compression", "delta", "dirty_source", "max_time_s"]

    var destination: Endpoint
    /// nil: plaintext (`insecure`).
    var tlsDirectory: String?
    /// The name the destination's certificate must carry; nil: the host of `destination`.
    var peerName: String?
    var options = MigrationOptions()

    init(_ a: [String: JSONValue], defaultTLSDirectory: String) throws(ControlError) {
        func bad(_ why: String) -> ControlError { ControlError(.invalidArgument, "migrate: \(why)") }
        func number(_ key: String, _ range: ClosedRange<Double>) throws(ControlError) -> Double? {
            guard let value = a[key], value != .null else { return nil }
            guard let n = value.double, n.isFinite, range.contains(n) else {
                throw bad("\"\(key)\" must be a number from \(String(format: "%g", range.lowerBound)) "
                    + "to \(String(format: "%g", range.upperBound))")
            }
            return n
        }
        func flag(_ key: String) throws(ControlError) -> Bool? {
            guard let value = a[key], value != .null else { return nil }
            guard let b = value.bool else { throw bad("\"\(key)\" must be true or false") }
            return b
        }
        guard let text = a["destination"]?.string else { throw bad("\"destination\" (\"host:port\") is required") }
        do { destination = try Endpoint(parsing: text) } catch { throw bad("destination \(error)") }
        let insecure = try flag("insecure") ?? false
        let directory = a["tls_dir"].flatMap { $0 == .null ? nil : $0 }
        if directory != nil, directory?.string == nil { throw bad("\"tls_dir\" must be a path") }
        if insecure, directory != nil { throw bad("\"tls_dir\" and \"insecure\" exclude each other") }
        tlsDirectory = insecure ? nil : directory?.string.map(RuntimeDirectory.absolute) ?? defaultTLSDirectory
        if let value = a["peer_name"], value != .null {
            guard let name = value.string, PeerNames.isValid(name) else {
                throw bad("\"peer_name\" must be a DNS name or an IP address")
            }
            if insecure { throw bad("\"peer_name\" and \"insecure\" exclude each other: plaintext checks no names") }
            peerName = name
        }
        if let ms = try number("downtime_ms", 1...600_000) { options.downtimeTarget = ms / 1000 }
        if let b = try number("bandwidth", 0...1e13) { options.bandwidthLimit = b == 0 ? nil : b }
        if let n = try number("streams", 1...64) {
            guard n.rounded() == n else { throw bad("\"streams\" must be a whole number") }
            options.streams = Int(n)
        }
        if let level = try number("compression", 0...22) {
            guard level.rounded() == level else { throw bad("\"compression\" must be a zstd level 1–22, or 0 for off") }
            options.compressionLevel = level == 0 ? nil : Int32(level)
        }
        if let adaptive = try flag("adaptive_compression") { options.adaptiveCompression = adaptive }
        if let delta = try flag("delta") { options.delta = delta }
        if let value = a["dirty_source"], value != .null {
            guard let mode = value.string.flatMap(DirtySourceMode.init(rawValue:)) else {
                throw bad("\"dirty_source\" must be \"kvm\", \"pv\" or \"hybrid\"")
            }
            options.dirtySource = mode
        }
        if let t = try number("max_time_s", 0.001...86_400) { options.maxTime = t }
    }
}
