import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// The PV network device end to end (protocol.md §5): the built-in guest on a real TAP in
    /// a bridge inside network namespaces this suite creates and deletes (TestSupport's
    /// `NetLab`, TEST-NET-1 addresses only), reached by real `ping` and `arping` and by our own
    /// key-value client (scripts/kvclient.py). Skips loudly without root, /dev/net/tun or KVM.
    @Suite(.serialized, .enabled(if: NetLab.unavailable == nil, "PV NIC tests: \(NetLab.unavailable ?? "")"))
    struct PVNetEndToEndTests {
        static let serve = ["--memory", "64M", "--cmdline", "workload=serve ip=\(NetLab.guestAddress)/24"]
        static let kvClient = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/kvclient.py").path

        /// Round-trip times (µs) from ping's `time=… ms` lines.
        static func rtts(_ ping: String) -> [Double] {
            ping.split(separator: "\n").compactMap { line in
                guard let r = line.range(of: "time=") else { return nil }
                return Double(line[r.upperBound...].prefix { $0 != " " }).map { $0 * 1000 }
            }.sorted()
        }

        @Test func guestAnswersPingArpingAndServesTheStore() throws {
            let lab = try NetLab()
            defer { lab.close() }
            let vm = try lab.startVM(Self.serve)
            #expect(vm.wait(for: "pvguest: serving udp 7070"), "the guest did not start serving: \(vm.text)")
            let mac = try #require(vm.text.split(separator: "\n").first { $0.hasPrefix("pvguest: net mac ") }?
                .split(separator: " ")[3]).lowercased()
            // The gratuitous ARP at boot taught the bridge where the guest is, before any client spoke.
            #expect(Wait.until(timeout: 30) {
                (try? lab.host(["bridge", "fdb", "show", "br", NetLab.bridge]))?.stdout.contains(mac) == true
            }, "the bridge never learned \(mac) from the guest's announcement")

            let arping = try lab.client(["arping", "-c", "3", "-w", "30", "-I", NetLab.clientInterface, NetLab.guestAddress])
            #expect(arping.stdout.contains("Received 3 response"), "arping: \(arping.text)")
            #expect(arping.stdout.lowercased().contains(mac), "arping saw another MAC: \(arping.text)")

            let ping = try lab.client(["ping", "-c", "200", "-i", "0.005", "-W", "5", NetLab.guestAddress])
            #expect(ping.stdout.contains("200 received"), "ping: \(ping.text)")
            let r = Self.rtts(ping.stdout)
            if !r.isEmpty {
                print("PV NIC ping round trip: p50 \(Int(r[r.count / 2])) µs, p99 \(Int(r[min(r.count - 1, r.count * 99 / 100)])) µs, "
                    + "max \(Int(r.last!)) µs over \(r.count)")
            }

            let kv = try lab.client(["python3", Self.kvClient, NetLab.guestAddress, "--keys", "200"], timeout: 120)
            #expect(kv.status == 0, "kvclient: \(kv.text)")
            #expect(kv.stdout.contains("kv: 200 set, 200 get, 0 wrong, 0 lost"), "kvclient: \(kv.text)")
            print(kv.stdout.trimmingCharacters(in: .whitespacesAndNewlines))

            vm.interrupt()
            #expect(vm.stderr.contains("PV NIC: tx "), "\(vm.stderr)")
            #expect(vm.stderr.contains("rejected: none"), "a well-behaved guest was rejected: \(vm.stderr)")
        }

        /// The host's NIC counters from `run`'s last line (`kicks K, sleep flushes S, wakes W`).
        static func nicCounter(_ name: String, in stderr: String) -> Int? {
            guard let r = stderr.range(of: name + " ") else { return nil }
            return Int(stderr[r.upperBound...].prefix { $0.isNumber })
        }

        /// NET_SLEEP (protocol.md §5.5): the built-in guest with `netsleep=0` speaks net page
        /// version 2 and kicks for every answer, as before; by default it speaks version 3 and
        /// the sleep that follows an answer transmits it — no kick. Both answer every ping.
        @Test func aGuestThatKicksAndOneThatSleepFlushesBothAnswer() throws {
            let lab = try NetLab(prefix: "pvmt-nic")
            defer { lab.close() }
            for netSleep in [false, true] {
                let vm = try lab.startVM(["--memory", "64M", "--cmdline",
                                          "workload=serve ip=\(NetLab.guestAddress)/24 netsleep=\(netSleep ? 1 : 0)"])
                #expect(vm.wait(for: "pvguest: serving udp 7070"), "the guest did not start serving: \(vm.text)")
                let ping = try lab.client(["ping", "-c", "40", "-i", "0.01", "-W", "5", NetLab.guestAddress])
                #expect(ping.stdout.contains("40 received"), "netsleep=\(netSleep): \(ping.text)")
                vm.interrupt() // it prints its NIC counters as it ends
                let kicks = Self.nicCounter("kicks", in: vm.stderr), flushes = Self.nicCounter("sleep flushes", in: vm.stderr)
                if netSleep {
                    // Each answer leaves on the sleep after it (a kick only if the next frame was already there).
                    #expect((flushes ?? 0) >= 20 && (kicks ?? .max) < 20, "kicks \(kicks ?? -1), flushes \(flushes ?? -1): \(vm.stderr)")
                } else {
                    #expect(flushes == 0 && (kicks ?? 0) >= 40, "kicks \(kicks ?? -1), flushes \(flushes ?? -1): \(vm.stderr)")
                }
                #expect(vm.stderr.contains("rejected: none"), "a well-behaved guest was rejected: \(vm.stderr)")
            }
        }

        /// A hostile guest (workload=chaos with a NIC): every bad net page, index, length and
        /// address is rejected and counted by reason, the guest goes on and exits 0, and the
        /// host then serves a fresh VM on the same bridge.
        @Test func hostileNICGuestLeavesTheHostHealthy() throws {
            let lab = try NetLab()
            defer { lab.close() }
            let chaos = try lab.startVM(["--memory", "64M", "--cmdline", "workload=chaos"])
            #expect(chaos.wait(for: "pvguest: chaos: nic waiting for a frame"), "\(chaos.text)")
            // Its RX step needs a frame from outside: broadcast ARP requests until it is done.
            #expect(Wait.until(timeout: 60) {
                if chaos.text.contains("pvguest: chaos done") { return true }
                _ = try? lab.client(["arping", "-c", "1", "-w", "1", "-I", NetLab.clientInterface, NetLab.guestAddress])
                return chaos.text.contains("pvguest: chaos done")
            }, "\(chaos.text)")
            #expect(chaos.waitForExit(timeout: 60))
            #expect(chaos.process.terminationStatus == 0, "\(chaos.text)")
            #expect(chaos.stderr.contains("rejected: badNetPage 2, reAttach 1, notAttached 2, badTxIndex 1, "
                + "badTxLength 2, badTxAddress 3, badRxLength 1, badRxAddress 1"), "\(chaos.stderr)")

            let vm = try lab.startVM(Self.serve)
            defer { vm.interrupt() }
            #expect(vm.wait(for: "pvguest: serving udp 7070"), "\(vm.text)")
            let ping = try lab.client(["ping", "-c", "3", "-i", "0.2", "-W", "5", NetLab.guestAddress])
            #expect(ping.stdout.contains("3 received"), "after the hostile guest: \(ping.text)")
        }

        /// `--net` names a bridge that does not exist: one line that says what to do, no VM.
        @Test func missingBridgeIsAClearError() throws {
            let lab = try NetLab()
            defer { lab.close() }
            let out = try lab.host([PVMigrateBinary.path ?? "pvmigrate", "run", "--net", "bridge=pvmtnone",
                                    "--memory", "64M"])
            #expect(out.status != 0)
            #expect(out.stderr.contains("error: no bridge named pvmtnone: create it first"), "\(out.text)")
            #expect(!out.stdout.contains("pvguest"), "the VM booted anyway: \(out.stdout)")
        }
    }
}
