import Foundation

/// Where the built `pvmigrate` executable is, for tests that drive the real binary:
/// $PVMIGRATE_BINARY, else next to the test runner (`swift test`, with or without
/// --scratch-path; the runner may sit inside a bundle directory), else .build/debug.
public enum PVMigrateBinary {
    public static let path: String? = {
        var candidates: [String] = []
        if let explicit = ProcessInfo.processInfo.environment["PVMIGRATE_BINARY"] { candidates.append(explicit) }
        if let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            var dir = URL(fileURLWithPath: me).deletingLastPathComponent()
            for _ in 0..<4 {
                candidates.append(dir.appendingPathComponent("pvmigrate").path)
                dir.deleteLastPathComponent()
            }
        }
        candidates.append(Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("pvmigrate").path)
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(package.appendingPathComponent(".build/debug/pvmigrate").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()
}

/// What a finished `pvmigrate` command printed, and its exit status.
public struct CommandOutput: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var text: String { stdout + stderr }
    public init(status: Int32, stdout: String, stderr: String) {
        self.status = status; self.stdout = stdout; self.stderr = stderr
    }
}

extension PVMigrateBinary {
    /// Runs the built `pvmigrate arguments…` to its end as a "host" whose runtime directory is
    /// `runtimeDirectory` (no default TLS directory), reading both outputs as they come; a
    /// command still running after `timeout` seconds is killed (that bounds a hang only).
    public static func run(_ arguments: [String], runtimeDirectory: String, timeout: Double) throws -> CommandOutput {
        guard let binary = path else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSLocalizedDescriptionKey:
                "the pvmigrate binary was not found: run `swift build` first"])
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["PVMIGRATE_RUNTIME_DIR"] = runtimeDirectory
        environment["PVMIGRATE_TLS_DIR"] = nil
        p.environment = environment
        p.standardInput = FileHandle.nullDevice
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        nonisolated(unsafe) var errData = Data()
        let errDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            errDone.signal()
        }
        let watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        errDone.wait()
        p.waitUntilExit()
        watchdog.cancel()
        return CommandOutput(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData, as: UTF8.self))
    }
}
