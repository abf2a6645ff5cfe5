#if canImport(Glibc)
import Glibc
#endif
import Control
import Foundation
import Testing
import TestSupport

@Suite struct ServiceNotifierTests {
    @Test(arguments: [false, true])
    func notificationsArriveAsOneDatagramOfLines(abstract: Bool) throws {
        let socket = try NotifySocket(abstract: abstract)
        let notifier = ServiceNotifier(environment: ["NOTIFY_SOCKET": socket.name])
        try notifier.notify(.ready, .status("listening on 127.0.0.1:7500\nsecond line"))
        #expect(socket.receive(timeout: 10) == "READY=1\nSTATUS=listening on 127.0.0.1:7500 second line\n")
        try notifier.notify(.reloading)
        let reloading = try #require(socket.receive(timeout: 10)).split(separator: "\n")
        #expect(reloading.first == "RELOADING=1")
        #expect(reloading.count == 2 && reloading[1].hasPrefix("MONOTONIC_USEC=")
            && UInt64(reloading[1].dropFirst("MONOTONIC_USEC=".count)) != nil, "\(reloading)")
        try notifier.notify(.stopping)
        #expect(socket.receive(timeout: 10) == "STOPPING=1\n")
    }

    @Test func withoutNotifySocketNothingIsSentAndNothingFails() throws {
        let notifier = ServiceNotifier(environment: ["NOTIFY_SOCKET": ""])
        #expect(notifier.socket == nil)
        try notifier.notify(.ready)
        #expect(ServiceNotifier(environment: [:]).socket == nil)
    }

    @Test func anUnreachableNotifySocketIsAnErrorThatNamesIt() {
        let notifier = ServiceNotifier(environment: ["NOTIFY_SOCKET": "/nonexistent/notify"])
        #expect {
            try notifier.notify(.ready)
        } throws: { error in
            "\(error)".contains("/nonexistent/notify") && "\(error)".contains("NOTIFY_SOCKET")
        }
    }
}

/// contrib/systemd/pvmigrate-listen.service, checked by systemd itself.
@Suite struct SystemdUnitTests {
    static let unit = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("contrib/systemd/pvmigrate-listen.service").path
    static let analyzer = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    @Test func theUnitFilePassesSystemdAnalyzeVerify() throws {
        guard let analyzer = Self.analyzer else {
            // Loud: the check did not run (Debian's systemd package provides systemd-analyze).
            print("SKIPPED theUnitFilePassesSystemdAnalyzeVerify: systemd-analyze is not installed (apt-get install systemd)")
            return
        }
        let text = try String(contentsOfFile: Self.unit, encoding: .utf8)
        #expect(text.contains("ExecStart=/usr/local/bin/pvmigrate listen"), "the unit's ExecStart changed: update this test")
        // verify also checks that ExecStart's binary exists: point it at the built one.
        let binary = try #require(PVMigrateBinary.path, "the pvmigrate binary was not found: run `swift build` first")
        let directory = "/tmp/pvm-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = directory + "/pvmigrate-listen.service"
        try text.replacingOccurrences(of: "/usr/local/bin/pvmigrate", with: binary)
            .write(toFile: copy, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: analyzer)
        p.arguments = ["verify", copy]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = err
        try p.run()
        let output = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "systemd-analyze verify failed: \(output)")
        // Unknown or misspelt options are only warnings to verify: refuse any line about the unit.
        let complaints = output.split(separator: "\n").filter { $0.contains("pvmigrate-listen.service") }
        #expect(complaints.isEmpty, "systemd-analyze verify complains: \(output)")
    }
}
