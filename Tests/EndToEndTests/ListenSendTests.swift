import Control
import Core
import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// Two hosts on one machine, driven through the real `pvmigrate` binary: each side has its
    /// own runtime directory (PVMIGRATE_RUNTIME_DIR), `certs init` makes their certificates,
    /// `listen` receives, `run --detach` + `send` migrate (protocol.md §3, §4).
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct ListenSendTests {
        /// The built `pvmigrate` (TestSupport: next to this test bundle, or $PVMIGRATE_BINARY).
        static let binary: String? = PVMigrateBinary.path

        /// A background `pvmigrate` (the listener): its output collected as it comes.
        final class Background: @unchecked Sendable {
            let process = Process()
            private let condition = NSCondition()
            private var out = Data(), err = Data() // guarded by `condition`
            private var outputEnded = 0 // pipes at end of file, guarded by `condition`

            init(_ arguments: [String], environment: [String: String]) throws {
                let binary = try #require(ListenSendTests.binary, "the pvmigrate binary was not found: run `swift build` first")
                process.executableURL = URL(fileURLWithPath: binary)
                process.arguments = arguments
                process.environment = environment
                process.standardInput = FileHandle.nullDevice
                let o = Pipe(), e = Pipe()
                process.standardOutput = o
                process.standardError = e
                for (pipe, isStderr) in [(o, false), (e, true)] {
                    pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
                        let data = h.availableData
                        if data.isEmpty { h.readabilityHandler = nil } // end of file
                        self?.append(data, stderr: isStderr)
                    }
                }
                try process.run()
            }

            private func append(_ data: Data, stderr: Bool) {
                condition.withLock {
                    if data.isEmpty { outputEnded += 1 } // end of file: the handler is called once with no data
                    if stderr { err += data } else { out += data }
                    condition.broadcast()
                }
            }

            var stdout: String { condition.withLock { String(decoding: out, as: UTF8.self) } }
            var text: String { condition.withLock { String(decoding: out + err, as: UTF8.self) } }

            /// Waits until standard output (or, with `orStandardError`, either stream) contains `text`.
            func wait(for text: String, orStandardError: Bool = false, timeout: Double = Wait.hangBound) -> Bool {
                let deadline = Date(timeIntervalSinceNow: timeout)
                return condition.withLock {
                    func seen() -> Bool { String(decoding: orStandardError ? out + err : out, as: UTF8.self).contains(text) }
                    while !seen() {
                        if !process.isRunning || !condition.wait(until: deadline) { return seen() }
                    }
                    return true
                }
            }

            /// SIGTERM, then the exit status once the process has exited and its output is all
            /// read (SIGKILL and nil after `timeout`).
            func terminate(timeout: Double = 60) -> Int32? {
                if process.isRunning { kill(process.processIdentifier, SIGTERM) }
                if !Wait.until(timeout: timeout, { !process.isRunning }) {
                    kill(process.processIdentifier, SIGKILL)
                    process.waitUntilExit()
                    return nil
                }
                // Both pipes reach end-of-file once the process and its children have closed them.
                Wait.until(timeout: timeout) { condition.withLock { outputEnded >= 2 } }
                return process.terminationStatus
            }
        }

        /// Two "hosts" (runtime directories) and their certificates; cleans up whatever a test
        /// leaves behind: the listeners, every VM on either side, the directories.
        final class Hosts: @unchecked Sendable {
            let root: String
            var listeners: [Background] = []

            init() throws {
                // Short: a Unix socket path must fit in 108 bytes.
                root = "/tmp/pvm-ls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            }

            deinit {
                for l in listeners { _ = l.terminate(timeout: 10) }
                for side in ["src", "dst"] {
                    let names = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/\(side)/vms")) ?? []
                    for name in names where name.hasSuffix(".sock") {
                        _ = try? run(side, ["stop", String(name.dropLast(5))], timeout: 10)
                    }
                }
                try? FileManager.default.removeItem(atPath: root)
            }

            func environment(_ side: String) -> [String: String] {
                var e = ProcessInfo.processInfo.environment
                e["PVMIGRATE_RUNTIME_DIR"] = "\(root)/\(side)"
                e["PVMIGRATE_TLS_DIR"] = nil
                return e
            }

            /// Runs `pvmigrate arguments…` as host `side` to the end (killed after `timeout` s).
            @discardableResult
            func run(_ side: String, _ arguments: [String], timeout: Double = 60) throws -> CommandOutput {
                try PVMigrateBinary.run(arguments, runtimeDirectory: "\(root)/\(side)", timeout: timeout)
            }

            /// `certs init --dir ROOT/DIR --hosts …`.
            func certs(_ dir: String, hosts: [String]) throws {
                let r = try run("src", ["certs", "init", "--dir", "\(root)/\(dir)", "--hosts"] + hosts)
                #expect(r.status == 0, "certs init failed: \(r.text)")
            }

            /// Starts `listen` on the destination on an ephemeral loopback port (chosen by the
            /// listener itself, so no other test can take it first); returns the port it printed.
            func listen(tlsDir: String, _ extra: [String] = [], environment more: [String: String] = [:]) throws -> (Background, UInt16) {
                try listen(port: 0, ["--tls-dir", "\(root)/\(tlsDir)"] + extra, environment: more)
            }

            /// Starts `listen --address 127.0.0.1:PORT arguments…` on the destination (port 0: one
            /// the listener chooses) and returns it with the port it printed once it listens.
            func listen(port: UInt16, _ arguments: [String], environment more: [String: String] = [:]) throws -> (Background, UInt16) {
                let l = try Background(["listen", "--address", "127.0.0.1:\(port)"] + arguments,
                                       environment: environment("dst").merging(more) { $1 })
                listeners.append(l)
                func line() -> Substring? { // only complete lines: the port must be whole
                    l.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                        .first { $0.contains("listening on 127.0.0.1:") }
                }
                #expect(l.wait(for: "listening on 127.0.0.1:") && Wait.until { line() != nil || !l.process.isRunning },
                        "listen did not start: \(l.text)")
                let line = try #require(line(), "listen printed no address: \(l.text)")
                let digits = line.split(separator: "listening on 127.0.0.1:")[1].prefix { $0.isNumber }
                return (l, try #require(UInt16(digits), "no port in \(line)"))
            }

            /// `run --name NAME --detach` on the source with a guest that keeps dirtying memory.
            func startVM(_ name: String) throws {
                let r = try run("src", ["run", "--name", name, "--detach", "--memory", "128M", "--cmdline",
                                        "workload=dirty mib=16 passes=0 pattern=random rate=4000 progress=0"])
                #expect(r.status == 0, "run --detach failed: \(r.text)")
            }

            func send(_ name: String, port: UInt16, tlsDir: String, _ extra: [String] = []) throws -> CommandOutput {
                try run("src", ["send", "127.0.0.1:\(port)", name, "--tls-dir", "\(root)/\(tlsDir)", "--max-time", "60"] + extra,
                        timeout: 120)
            }

            /// `status NAME --json` on `side`, or nil when it fails (no such VM).
            func status(_ side: String, _ name: String) throws -> JSONValue? {
                let r = try run(side, ["status", name, "--json"])
                guard r.status == 0 else { return nil }
                return try JSONValue(parsing: Data(r.stdout.utf8))
            }

            /// The names in `ps`'s table on `side`.
            func psNames(_ side: String) throws -> [String] {
                let r = try run(side, ["ps"])
                #expect(r.status == 0, "ps failed: \(r.text)")
                return r.stdout.split(separator: "\n").dropFirst().compactMap { $0.split(separator: " ").first.map(String.init) }
            }
        }

        @Test func certsInitWritesACAAndPerHostDirectoriesWithPrivateKeys() throws {
            let hosts = try Hosts()
            let r = try hosts.run("src", ["certs", "init", "--dir", "\(hosts.root)/pki", "--hosts", "src", "dst=192.0.2.10,dst.example"])
            #expect(r.status == 0, "\(r.text)")
            #expect(r.stdout.contains("\(hosts.root)/pki/src"), "\(r.stdout)")
            #expect(r.stdout.contains("/pki/dst/ca.pem cert.pem key.pem (names: dst, 192.0.2.10, dst.example)"), "\(r.stdout)")
            let bad = try hosts.run("src", ["certs", "init", "--dir", "\(hosts.root)/pki", "--hosts", "dst=IP:192.0.2.10"])
            #expect(bad.status != 0 && bad.stderr.contains("not a usable host name"), "\(bad.text)")
            func mode(_ path: String) throws -> Int {
                let attributes = try FileManager.default.attributesOfItem(atPath: path)
                return try #require(attributes[.posixPermissions] as? Int)
            }
            #expect(try mode("\(hosts.root)/pki/ca.key") == 0o600)
            for host in ["src", "dst"] {
                for file in ["ca.pem", "cert.pem", "key.pem"] {
                    #expect(FileManager.default.fileExists(atPath: "\(hosts.root)/pki/\(host)/\(file)"), "\(host)/\(file)")
                }
                #expect(try mode("\(hosts.root)/pki/\(host)/key.pem") == 0o600, "\(host)/key.pem must be private")
            }
        }

        @Test func listenWithoutATLSDirectorySaysHowToMakeOne() throws {
            let hosts = try Hosts()
            let r = try hosts.run("dst", ["listen", "--address", "127.0.0.1:0"], timeout: 20)
            #expect(r.status != 0)
            #expect(r.stderr.contains("pvmigrate certs init"), "\(r.text)")
            #expect(r.stderr.split(separator: "\n").count == 1, "one line: \(r.stderr)")
        }

        @Test func sentVMRunsAtTheListenerAndIsGoneAtTheSource() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["src", "dst=127.0.0.1"])
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst")
            try hosts.startVM("vm")

            let sent = try hosts.send("vm", port: port, tlsDir: "pki/src")
            #expect(sent.status == 0, "send failed: \(sent.text)")
            #expect(sent.stdout.contains("migrated VM vm"), "\(sent.text)")

            #expect(listener.wait(for: "VM vm arrived from 127.0.0.1:"), "\(listener.text)")
            #expect(try hosts.psNames("dst") == ["vm"])
            let status = try #require(try hosts.status("dst", "vm"), "status vm fails at the destination")
            #expect(status["state"]?.string == "running", "\(status)")
            #expect(status["arrived_from"]?.string?.contains("127.0.0.1") == true, "\(status)")
            #expect(try hosts.psNames("src").isEmpty, "the source still lists the VM")
            #expect(try hosts.status("src", "vm") == nil, "the source still answers for the VM")

            // SIGTERM: the listener stops the VMs it received, removes their sockets, exits 0.
            #expect(listener.terminate() == 0, "\(listener.text)")
            #expect(listener.stdout.contains("VM vm is gone"), "\(listener.text)")
            let left = (try? FileManager.default.contentsOfDirectory(atPath: "\(hosts.root)/dst/vms")) ?? []
            #expect(!left.contains { $0.hasSuffix(".sock") }, "sockets left: \(left)")
        }

        @Test func sendToAListenerOfAnotherCAFailsAndTheVMKeepsRunningAtTheSource() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["src"])
            try hosts.certs("other", hosts: ["dst=127.0.0.1"])
            let (listener, port) = try hosts.listen(tlsDir: "other/dst")
            try hosts.startVM("vm")
            let before = try #require(try hosts.status("src", "vm"))["pv"]?["pages_written"]?.uint64 ?? 0

            let sent = try hosts.send("vm", port: port, tlsDir: "pki/src")
            #expect(sent.status != 0, "send to a listener of another CA succeeded: \(sent.text)")
            let status = try #require(try hosts.status("src", "vm"), "the VM is gone from the source")
            #expect(status["state"]?.string == "running", "\(status)")
            var after: UInt64 = 0
            try Wait.until {
                after = try hosts.status("src", "vm")?["pv"]?["pages_written"]?.uint64 ?? 0
                return after > before
            }
            #expect(after > before, "the guest does not make progress at the source (\(before) → \(after))")
            #expect(try hosts.psNames("dst").isEmpty)
            #expect(listener.wait(for: "rejected a connection"), "the listener logged no rejection: \(listener.text)")
            #expect(listener.terminate() == 0, "\(listener.text)")
        }

        @Test func twoMigrationsIntoOneListenerAtOnceBothSucceed() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["src", "dst=127.0.0.1"])
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst")
            try hosts.startVM("a")
            try hosts.startVM("b")

            let results = Locked<[String: CommandOutput]>([:])
            let group = DispatchGroup()
            for name in ["a", "b"] {
                group.enter()
                Thread.detachNewThread {
                    defer { group.leave() }
                    let r = (try? hosts.send(name, port: port, tlsDir: "pki/src")) ?? CommandOutput(status: -1, stdout: "", stderr: "not run")
                    results.withLock { $0[name] = r }
                }
            }
            group.wait()
            for name in ["a", "b"] {
                let r = try #require(results.value[name])
                #expect(r.status == 0, "send \(name) failed: \(r.text)")
            }
            #expect(try hosts.psNames("dst").sorted() == ["a", "b"], "\(listener.text)")
            #expect(try hosts.psNames("src").isEmpty)
            for name in ["a", "b"] {
                #expect(try hosts.status("dst", name)?["state"]?.string == "running")
            }
            #expect(listener.terminate() == 0, "\(listener.text)")
        }
    }
}
