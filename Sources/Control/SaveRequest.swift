import Foundation
import Migrate

/// `save`'s arguments (protocol.md §4): the file, how, and the migration options that apply
/// to a file (downtime target, maximum time, dirty source, zstd level for the compressed
/// layout). Decoding checks types and ranges.
public struct SaveRequest: Sendable, Equatable {
    /// Absolute path of the snapshot file (made absolute against the client's directory).
    public var path: String
    public var layout: SnapshotLayout
    /// Pre-copy rounds while the guest runs, then a short pause; else pause-and-save.
    public var live: Bool
    /// Stop the VM once the file is complete.
    public var stop: Bool
    public var options: MigrationOptions

    public init(path: String, layout: SnapshotLayout = .mapped, live: Bool = false, stop: Bool = false,
                options: MigrationOptions = .init()) {
        self.path = path; self.layout = layout; self.live = live; self.stop = stop; self.options = options
    }

    public func validate() throws(ControlError) {
        guard path.hasPrefix("/"), !path.hasSuffix("/") else {
            throw ControlError(.invalidArgument, "\"path\" must be an absolute file path")
        }
        do { try options.validate() } catch {
            if case let .invalidOptions(why) = error { throw ControlError(.invalidArgument, why) }
            throw ControlError(.invalidArgument, error.description)
        }
    }

    static var argumentNames: [String] {
        Key.allCases.map(\.stringValue) + MigrationOptions.CodingKeys.allCases.map(\.stringValue)
    }
}

extension SaveRequest: Codable {
    private enum Key: String, CodingKey, CaseIterable { case path, layout, live, stop }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        guard let path: String = try c.argument(.path, must: "a path") else {
            throw ControlError(.invalidArgument, "\"path\" (the snapshot file) is required")
        }
        self.path = RuntimeDirectory.absolute(path)
        let layoutName: String = try c.argument(.layout, must: "\"mapped\" or \"compressed\"") ?? "mapped"
        guard let layout = SnapshotLayout(name: layoutName) else {
            throw ControlError(.invalidArgument, "\"layout\" must be \"mapped\" or \"compressed\"")
        }
        self.layout = layout
        live = try c.argument(.live, must: "true or false") ?? false
        stop = try c.argument(.stop, must: "true or false") ?? false
        options = try MigrationOptions(from: decoder)
        try validate()
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(path, forKey: .path)
        try c.encode(layout.description, forKey: .layout)
        try c.encode(live, forKey: .live)
        try c.encode(stop, forKey: .stop)
        try options.encode(to: encoder)
    }
}
