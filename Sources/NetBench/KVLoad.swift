// The UDP request generator (issue 14's "own small client"): requests to the guest's store at
// a fixed rate — or with a fixed number in flight, to measure what the NIC carries — on one
// sender thread, answers matched on one receiver thread, every timestamp on the monotonic
// clock. What it saw is a `KVLedger`; the statistics are ClientStatistics' pure functions.
//
// Round trips run from just before send(2) to two receive times: the kernel's receive stamp
// (SO_TIMESTAMPNS, the time iputils ping reports its round trips to, so that figure is like for
// like with ping's) and the moment the receiver thread read the answer, which adds that thread's
// wake-up (tens of µs on a nested host with an idle core). `bench --net` reports both
// (docs/benchmarks.md, "Like for like with ping").

import Core
import Foundation

public final class KVLoad: @unchecked Sendable {
    /// How requests are paced.
    public enum Pacing: Sendable, Equatable {
        /// Request n leaves at start + n / rate (a late sender catches up at once).
        case rate
        /// Request n leaves once request n − window is answered or older than `giveUpMs`.
        case window(Int, giveUpMs: Int)
    }

    public let plan: KVLoadPlan
    private let clients: UDPClients
    private let ledger: Locked<KVLedger>
    private let changed = NSCondition()
    private let stopping = Locked(false)
    private let sendFailures = Locked(0)
    private let threads = DispatchGroup()
    private let receiverStop = Locked(false)

    /// `clients` has `plan.sockets` sockets for the load (more are left alone).
    public init(plan: KVLoadPlan, clients: UDPClients) {
        precondition(clients.sockets.count >= plan.sockets)
        self.plan = plan
        self.clients = clients
        ledger = Locked(KVLedger(plan: plan))
    }

    /// Starts the receiver and the sender.
    public func start(pacing: Pacing = .rate) {
        spawn("nb-receive") { [self] in
            while !receiverStop.value {
                clients.receive(timeoutMs: 20) { socket, bytes, at in
                    ledger.withLock { _ = $0.received(bytes, socket: socket, at: at.user, kernelNs: at.kernel) }
                }
                changed.broadcast()
            }
        }
        spawn("nb-send") { [self] in send(pacing) }
    }

    private func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
        threads.enter()
        let t = Thread { [threads] in body(); threads.leave() }
        t.name = name
        t.start()
    }

    private func send(_ pacing: Pacing) {
        let start = MonotonicClock.now()
        let interval = 1e9 / plan.rate
        var n = 0
        while !stopping.value {
            switch pacing {
            case .rate:
                let due = start + UInt64(Double(n) * interval)
                if MonotonicClock.now() < due {
                    MonotonicClock.sleep(until: min(due, MonotonicClock.now() + 20_000_000))
                    continue
                }
            case let .window(window, giveUpMs):
                if n >= window, !mayPass(plan.firstID + n - window, giveUpNs: UInt64(giveUpMs) * 1_000_000) { continue }
            }
            // The message is built first, so the send time is taken right before send(2), as
            // ping takes its own (only this thread records requests: the id stays the next one).
            let id = ledger.withLock { $0.nextID }
            let bytes = Array(plan.message(id).utf8)
            _ = ledger.withLock { $0.sent(at: MonotonicClock.now()) }
            if !clients.send(plan.socket(of: id), bytes) { sendFailures.withLock { $0 += 1 } }
            n += 1
        }
    }

    /// Whether request `id` is answered or given up on; waits briefly for a change if not.
    private func mayPass(_ id: Int, giveUpNs: UInt64) -> Bool {
        let (answered, sent) = ledger.withLock { l in (l.record(id).replyNs != nil, l.record(id).sentNs) }
        if answered || MonotonicClock.now() - sent > giveUpNs { return true }
        changed.lock()
        _ = changed.wait(until: Date(timeIntervalSinceNow: 0.005))
        changed.unlock()
        return false
    }

    /// Stops sending, waits (at most `drainSeconds`) for the answers still on their way, stops
    /// receiving and returns what was seen.
    public func stop(drainSeconds: Double) -> (ledger: KVLedger, sendFailures: Int) {
        stopping.withLock { $0 = true }
        let deadline = Date(timeIntervalSinceNow: drainSeconds)
        changed.lock()
        while ledger.withLock({ $0.waiting(now: MonotonicClock.now()) }) > 0, changed.wait(until: deadline) {}
        changed.unlock()
        receiverStop.withLock { $0 = true }
        threads.wait()
        return (ledger.value, sendFailures.value)
    }

    /// Sends `message` on socket `socket` (one the load does not use) until the store answers
    /// for key `name` or `attempts` tries of `timeoutMs` each passed; nil: no answer.
    public static func request(_ message: String, key name: String, on clients: UDPClients, socket: Int,
                               attempts: Int = 5, timeoutMs: Int32 = 200) -> KVAnswer? {
        for _ in 0..<attempts {
            guard clients.send(socket, message) else { continue }
            let deadline = MonotonicClock.now() + UInt64(timeoutMs) * 1_000_000
            while MonotonicClock.now() < deadline {
                var found: KVAnswer?
                clients.receive(only: socket, timeoutMs: 10) { _, bytes, _ in
                    guard let (k, answer) = KVLoadPlan.parse(answer: bytes), k == name else { return }
                    found = answer
                }
                if let found { return found }
            }
        }
        return nil
    }

    /// The final read of key `key` of the plan (see `request`).
    public static func get(_ key: Int, on clients: UDPClients, socket: Int) -> KVAnswer? {
        let name = KVLoadPlan.keyName(key)
        return request("GET \(name)", key: name, on: clients, socket: socket)
    }
}
