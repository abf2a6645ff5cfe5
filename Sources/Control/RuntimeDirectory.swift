#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Posix

/// Where a host's named VMs live (protocol.md §4): `<path>/vms/<name>.sock` (control socket),
/// `<path>/vms/<name>.log` (a detached VM's own messages), `<path>/tls` (the default TLS
/// directory, §3.1).
///
/// The path is `$PVMIGRATE_RUNTIME_DIR` when set, else `/run/pvmigrate` when writable, else
/// `$XDG_RUNTIME_DIR/pvmigrate`, else `/tmp/pvmigrate-<uid>`. Directories it creates are
/// mode 0700; it refuses a directory (or `vms/`) that another user owns or may write to.
public struct RuntimeDirectory: Sendable {
    public let path: String
    /// `$PVMIGRATE_TLS_DIR` when set, else `<path>/tls`: where `send` and `listen` look for
    /// ca.pem, cert.pem and key.pem unless told otherwise, and where `certs init` writes them.
    public let defaultTLSDirectory: String

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        if let explicit = environment["PVMIGRATE_RUNTIME_DIR"], !explicit.isEmpty {
            path = Self.absolute(explicit)
        } else if Self.usable("/run/pvmigrate") {
            path = "/run/pvmigrate"
        } else if let xdg = environment["XDG_RUNTIME_DIR"], xdg.hasPrefix("/"), Self.usable(xdg + "/pvmigrate") {
            path = xdg + "/pvmigrate"
        } else {
            path = "/tmp/pvmigrate-\(getuid())"
        }
        try Self.makeDirectory(path)
        try Self.makeDirectory(path + "/vms")
        if let tls = environment["PVMIGRATE_TLS_DIR"], !tls.isEmpty {
            defaultTLSDirectory = Self.absolute(tls)
        } else {
            defaultTLSDirectory = path + "/tls"
        }
    }

    public var vmsDirectory: String { path + "/vms" }

    public func socketPath(for name: String) -> String { "\(path)/vms/\(name).sock" }

    /// Where a detached VM (`run --detach`) writes pvmigrate's messages about it.
    public func logPath(for name: String) -> String { "\(path)/vms/\(name).log" }

    /// A VM name: 1–64 characters, `[A-Za-z0-9][A-Za-z0-9._-]*`.
    public static func validate(name: String) throws {
        let allowed = name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == 0x2e || c == 0x5f || c == 0x2d
        }
        guard let first = name.utf8.first, name.utf8.count <= 64, allowed, first != 0x2e, first != 0x5f, first != 0x2d
        else {
            throw ControlError(.invalidName, "invalid VM name \"\(name)\": use 1–64 letters, digits, '.', '_' "
                + "or '-', starting with a letter or digit")
        }
    }

    /// Names that have a socket file, sorted (some may be stale: ask each one).
    public func listNames() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: vmsDirectory)) ?? []
        return entries.compactMap { entry -> String? in
            guard entry.hasSuffix(".sock") else { return nil }
            let name = String(entry.dropLast(5))
            return (try? Self.validate(name: name)) == nil ? nil : name
        }.sorted()
    }

    // MARK: Helpers

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// A directory we can use: it exists and is writable, or its parent is.
    private static func usable(_ dir: String) -> Bool {
        if access(dir, W_OK | X_OK) == 0 { return true }
        if access(dir, F_OK) == 0 { return false }
        let parent = (dir as NSString).deletingLastPathComponent
        return access(parent, W_OK | X_OK) == 0
    }

    /// Creates `dir` (and missing parents) mode 0700, or checks that the existing one is a
    /// directory of ours, writable by us and by nobody else (`checkOwnership`).
    private static func makeDirectory(_ dir: String) throws {
        if mkdir(dir, 0o700) != 0 {
            let code = errno
            if code == ENOENT {
                do {
                    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                            attributes: [.posixPermissions: 0o700])
                } catch {
                    throw ControlError(.runtimeDirectory, "cannot create the runtime directory \(dir): "
                        + "\(error.localizedDescription); set PVMIGRATE_RUNTIME_DIR to a directory you can write")
                }
            } else if code != EEXIST {
                throw ControlError(.runtimeDirectory, "cannot create the runtime directory \(dir): "
                    + "\(Errno(code).description); set PVMIGRATE_RUNTIME_DIR to a directory you can write")
            }
        }
        var info = stat()
        guard lstat(dir, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw ControlError(.runtimeDirectory, "the runtime path \(dir) is not a directory; remove it or "
                + "set PVMIGRATE_RUNTIME_DIR to another directory")
        }
        try checkOwnership(dir, info)
        guard access(dir, W_OK | X_OK) == 0 else {
            throw ControlError(.runtimeDirectory, "cannot write to the runtime directory \(dir); "
                + "set PVMIGRATE_RUNTIME_DIR to a directory you can write")
        }
    }

    /// A directory whose control sockets we trust must be ours alone: owned by this process's
    /// effective user (root included — root must not trust a directory another user made)
    /// and writable by nobody else, or another local user could put a spoofed control socket
    /// in it (one that answers `stop`, say) or delete ours (docs/security.md "Local users").
    static func checkOwnership(_ dir: String, _ info: stat, user: uid_t = geteuid()) throws {
        guard info.st_uid == user else {
            throw ControlError(.runtimeDirectory, "the runtime directory \(dir) belongs to uid \(info.st_uid), not "
                + "to this user (uid \(user)): another user could plant control sockets in it. Set "
                + "PVMIGRATE_RUNTIME_DIR to a directory of yours, or, if it should be yours, "
                + "`chown \(user) \(dir) && chmod 0700 \(dir)`")
        }
        let mode = info.st_mode & 0o7777
        guard mode & (S_IWGRP | S_IWOTH) == 0 else {
            throw ControlError(.runtimeDirectory, "the runtime directory \(dir) is writable by "
                + "\(mode & S_IWOTH != 0 ? "every user" : "its group") (mode \(String(mode, radix: 8))): another "
                + "user could plant control sockets in it. Run `chmod 0700 \(dir)`, or set "
                + "PVMIGRATE_RUNTIME_DIR to a private directory")
        }
    }
}
