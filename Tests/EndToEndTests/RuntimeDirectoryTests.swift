import Control
import Foundation
import Testing

// Issue 9 item 6: a runtime directory another user owns, or may write to, could
// hold a spoofed control socket (one that answers `stop`); pvmigrate refuses it,
// root included (docs/security.md "Local users").

/// A fresh directory under /tmp with `mode`, owned by `owner` (nil: us); removed by `remove()`.
private struct TemporaryRuntime {
    let path = "/tmp/pvm-rt-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    init(mode: mode_t, owner: uid_t? = nil, vmsMode: mode_t? = nil) throws {
        try #require(mkdir(path, 0o700) == 0, "mkdir \(path): errno \(errno)")
        if let vmsMode {
            try #require(mkdir(path + "/vms", 0o700) == 0 && chmod(path + "/vms", vmsMode) == 0)
        }
        // chmod after mkdir: the umask does not narrow it.
        try #require(chmod(path, mode) == 0, "chmod \(path): errno \(errno)")
        if let owner { try #require(chown(path, owner, gid_t(owner)) == 0, "chown \(path): errno \(errno)") }
    }

    func open() throws -> RuntimeDirectory {
        try RuntimeDirectory(environment: ["PVMIGRATE_RUNTIME_DIR": path])
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// `body` throws a runtime-directory ControlError whose message contains every piece of `expected`.
private func expectRefusal(_ expected: [String], _ body: () throws -> Void) {
    #expect {
        try body()
    } throws: { error in
        guard let error = error as? ControlError, error.kind == .runtimeDirectory else { return false }
        print("refused: \(error)")
        return expected.allSatisfy { error.description.contains($0) }
    }
}

@Suite("runtime directory ownership and mode")
struct RuntimeDirectoryTests {
    @Test func aPrivateDirectoryOfOursIsAcceptedAndVmsIsCreatedPrivate() throws {
        let dir = try TemporaryRuntime(mode: 0o700)
        defer { dir.remove() }
        let runtime = try dir.open()
        #expect(runtime.path == dir.path)
        var info = stat()
        #expect(stat(runtime.vmsDirectory, &info) == 0 && info.st_mode & 0o777 == 0o700)
    }

    @Test func aWorldWritableDirectoryIsRefusedWithWhatToDo() throws {
        let dir = try TemporaryRuntime(mode: 0o777)
        defer { dir.remove() }
        expectRefusal([dir.path, "writable by every user", "mode 777", "chmod 0700 \(dir.path)"]) { _ = try dir.open() }
    }

    @Test func aGroupWritableDirectoryIsRefused() throws {
        let dir = try TemporaryRuntime(mode: 0o770)
        defer { dir.remove() }
        expectRefusal([dir.path, "writable by its group", "chmod 0700"]) { _ = try dir.open() }
    }

    @Test func aWorldWritableVmsDirectoryIsRefused() throws {
        let dir = try TemporaryRuntime(mode: 0o700, vmsMode: 0o777)
        defer { dir.remove() }
        expectRefusal(["\(dir.path)/vms", "writable by every user"]) { _ = try dir.open() }
    }

    @Test(.enabled(if: geteuid() == 0, "needs root to give the directory to another user"))
    func rootRefusesADirectoryOwnedByAnotherUserEvenWithMode0777() throws {
        for mode: mode_t in [0o700, 0o777] {
            let dir = try TemporaryRuntime(mode: mode, owner: 65534)
            defer { dir.remove() }
            expectRefusal([dir.path, "belongs to uid 65534", "uid 0", "PVMIGRATE_RUNTIME_DIR"]) { _ = try dir.open() }
        }
    }
}
