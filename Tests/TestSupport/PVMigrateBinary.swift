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
