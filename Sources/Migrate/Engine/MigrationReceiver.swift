import Core
import Foundation

/// How a destination receives VMs.
public struct ReceiverOptions: Sendable {
    /// Largest guest this host accepts.
    public var maximumMemory: UInt64 = 64 << 30
    public var maximumStreams = 64
    public var timeout: Double = 30
    /// The console of an arriving VM, by name.
    public var console: @Sendable (String) -> ConsoleSink = { _ in ConsoleBuffer() }
    public var log: @Sendable (String) -> Void = { _ in }
    public init() {}
}

/// A VM that arrived and runs on this host.
public struct ReceivedVM: @unchecked Sendable {
    public let name: String
    public let machine: Machine
    public let kernelSHA256: [UInt8]
    public let stats: ReceiveStats
}

public struct ReceiveStats: Sendable, Codable, Equatable {
    public var seconds = 0.0
    public var streams = 0
    public var pagesApplied = 0
    public var frames: UInt64 = 0
    public var digest: UInt64 = 0
    /// CPU seconds (user + system) of the session's threads, summed per thread (`CPUMeter`);
    /// the listener's accept and TLS handshake threads are not included.
    public var cpuSeconds = 0.0

    /// CPU seconds per GiB of guest memory applied (pages applied × 4 KiB).
    public var cpuSecondsPerGiB: Double { MigrationStats.perGiB(cpuSeconds, pages: pagesApplied) }
}

/// One incoming migration: the destination's state machine (protocol.md §3.4).
/// awaitHello → awaitMachine → receiving → awaitCommit → resumed; any error → failed, and
/// the half-built VM is discarded with everything it holds.
final class ReceiveSession: @unchecked Sendable {
    let id: [UInt8]
    let hello: Hello
    private let control: FrameChannel
    private let options: ReceiverOptions
    private let joins = NSCondition()
    private var joined: [Int: FrameChannel] = [:] // guarded by `joins`
    private var streams = 1
    private var failed = false

    init(hello: Hello, control: FrameChannel, options: ReceiverOptions) {
        id = hello.migrationID
        self.hello = hello
        self.control = control
        self.options = options
    }

    /// A data stream of this migration arrived (JOIN). False when it does not belong.
    func attach(_ channel: FrameChannel, index: Int) -> Bool {
        joins.withLock {
            guard !failed, index >= 1, index < streams, joined[index] == nil else { return false }
            joined[index] = channel
            joins.broadcast()
            return true
        }
    }

    private func abandon() {
        joins.withLock {
            failed = true
            joined.values.forEach { $0.stream.close() }
        }
        control.stream.close()
    }

    func run() throws(MigrationError) -> ReceivedVM {
        do {
            return try receive()
        } catch {
            control.sendError(error.reportCode, error.description)
            abandon()
            throw error
        }
    }

    private func receive() throws(MigrationError) -> ReceivedVM {
        let started = ContinuousClock.now
        let cpu = CPUMeter(), threadCPUAtStart = CPUMeter.threadSeconds()
        guard hello.minVersion <= 1, hello.maxVersion >= 1 else {
            throw .incompatible("the source speaks protocol versions \(hello.minVersion)–\(hello.maxVersion); this host speaks 1")
        }
        joins.withLock { streams = min(Int(hello.streams), options.maximumStreams) }
        let accepted = hello.capabilities.intersection(.all)
        do { try control.send(.helloAck(HelloAck(version: 1, streams: UInt32(streams), capabilities: accepted))) }
        catch { throw .transport(error) }

        guard case let .machine(description) = try control.receive() else {
            throw .wire(.unexpected(frame: "a frame other than MACHINE", state: "awaiting MACHINE"))
        }
        let machine = try build(description)
        let dataStreams = try waitForJoins()

        // Receiving: every stream applies its own pages (disjoint: index mod streams), and
        // records each page's hash for the digest as it lands.
        let hashes = PageHashTable(pageCount: machine.memory.pageCount)
        let failures = Locked<MigrationError?>(nil)
        let applied = Locked(0)
        let group = DispatchGroup()
        for channel in dataStreams {
            group.enter()
            Thread.detachNewThread { [self] in
                defer { group.leave() }
                do throws(MigrationError) {
                    _ = try cpu.measure { () throws(MigrationError) in
                        try drain(channel, into: machine, hashes: hashes, applied: applied, control: false)
                    }
                } catch {
                    failures.withLock { if $0 == nil { $0 = error } }
                    control.stream.close() // unblock the control loop
                }
            }
        }
        do {
            _ = try drain(control, into: machine, hashes: hashes, applied: applied, control: true)
        } catch {
            dataStreams.forEach { $0.stream.close() }
            group.wait()
            throw failures.value ?? error
        }
        group.wait()
        if let e = failures.value { throw e }

        // awaitCommit: STATE, then COMMIT with the source's digest.
        guard case let .state(blob) = try control.receive() else {
            throw .wire(.unexpected(frame: "a frame other than STATE", state: "awaiting STATE"))
        }
        let state: MachineState
        do { state = try MachineState(encoded: blob) } catch { throw .state(error) }
        guard case let .commit(expected, _) = try control.receive() else {
            throw .wire(.unexpected(frame: "a frame other than COMMIT", state: "awaiting COMMIT"))
        }
        var ballooned: PageBitmap?
        if let words = state.pv?.balloonWords, words.count == (machine.memory.pageCount + 63) / 64 {
            var b = PageBitmap(pageCount: machine.memory.pageCount)
            b.merge(words: words, atPage: 0)
            ballooned = b
        }
        let digest = hashes.digest(excluding: ballooned)
        guard digest.digest == expected else { throw .digestMismatch(expected: expected, actual: digest.digest) }
        do { try machine.restore(state) } catch { throw .machine(error) }
        machine.start()
        do { try control.send(.commitAck(status: 0)) } catch {
            // The guest runs here now; the source may not know. It will resume its copy only
            // if it never got the acknowledgment — the classic two-generals window, logged.
            options.log("VM \(description.name) resumed, but the acknowledgment could not be sent: \(error)")
        }
        control.stream.close()
        dataStreams.forEach { $0.stream.close() }
        let stats = ReceiveStats(seconds: (ContinuousClock.now - started).seconds, streams: streams,
                                 pagesApplied: applied.value,
                                 frames: control.framesReceived + dataStreams.reduce(0) { $0 + $1.framesReceived },
                                 digest: digest.digest,
                                 cpuSeconds: cpu.seconds + CPUMeter.threadSeconds() - threadCPUAtStart)
        return ReceivedVM(name: description.name, machine: machine, kernelSHA256: description.kernelSHA256, stats: stats)
    }

    private func build(_ d: MachineDescription) throws(MigrationError) -> Machine {
        guard d.memoryBytes <= options.maximumMemory else {
            throw .machine(.invalidConfiguration("the VM has \(d.memoryBytes >> 20) MiB; this host accepts at most \(options.maximumMemory >> 20) MiB"))
        }
        guard d.vcpus == 1 else { throw .machine(.invalidConfiguration("\(d.vcpus) vCPUs: this pvmigrate runs 1-vCPU VMs")) }
        guard d.kernelSHA256.count == 32, !d.name.isEmpty else { throw .wire(.malformed(type: "MACHINE", reason: "bad identity")) }
        let configuration = Machine.Configuration(memorySize: d.memoryBytes, kernel: [], inKernelIRQChip: d.inKernelIRQChip,
                                                  console: options.console(d.name), log: options.log)
        do { return try Machine(restoring: configuration) } catch { throw .machine(error) }
    }

    private func waitForJoins() throws(MigrationError) -> [FrameChannel] {
        let deadline = Date(timeIntervalSinceNow: options.timeout)
        joins.lock()
        defer { joins.unlock() }
        while joined.count < streams - 1 {
            if !joins.wait(until: deadline) { throw .transport(.timeout) }
        }
        return (1..<streams).compactMap { joined[$0] }
    }

    /// Applies frames until STREAM_END. The control stream also carries ROUND frames.
    private func drain(_ channel: FrameChannel, into machine: Machine, hashes: PageHashTable, applied: Locked<Int>,
                       control isControl: Bool) throws(MigrationError) -> Int {
        let decoder = PageBatchDecoder()
        var pages = 0
        while true {
            let before = channel.framesReceived
            switch try channel.receive() {
            case let .pages(flags, payload):
                let stats: BatchStats
                do {
                    stats = try decoder.apply(flags: flags, payload: payload, to: machine.memory, expectedRound: nil) {
                        hashes.record($0, $1)
                    }
                }
                catch { throw .codec(error) }
                let n = stats.zero + stats.raw + stats.delta
                pages += n
                applied.withLock { $0 += n }
            case .round where isControl:
                continue
            case let .streamEnd(frames):
                guard frames == before else {
                    throw .wire(.malformed(type: "STREAM_END", reason: "\(frames) frames announced, \(before) received"))
                }
                return pages
            case let .error(report):
                throw .peer(report)
            case let other:
                throw .wire(.unexpected(frame: other.name, state: "receiving pages"))
            }
        }
    }
}
