import Core
import Foundation
import Testing
import Control
import Migrate
import TestSupport

/// `MigrationOptions.validate()`, the one check of migration options: each range at its
/// boundaries, from the inside and the outside (protocol.md §4).
@Suite struct OptionValidationTests {
    static func valid(_ change: (inout MigrationOptions) -> Void) -> Bool {
        var o = MigrationOptions()
        change(&o)
        return (try? o.validate()) != nil
    }

    @Test func theDefaultsAreValid() { #expect(Self.valid { _ in }) }

    @Test func downtimeTargetIsOneMillisecondToTenMinutes() {
        #expect(Self.valid { $0.downtimeTarget = 0.001 })
        #expect(Self.valid { $0.downtimeTarget = 600 })
        #expect(!Self.valid { $0.downtimeTarget = 0.000999 })
        #expect(!Self.valid { $0.downtimeTarget = 600.001 })
        #expect(!Self.valid { $0.downtimeTarget = 0 })
        #expect(!Self.valid { $0.downtimeTarget = .nan })
        #expect(!Self.valid { $0.downtimeTarget = .infinity })
    }

    @Test func bandwidthLimitIsNoneOrOneMiBPerSecondTo1e13() {
        #expect(Self.valid { $0.bandwidthLimit = nil })
        #expect(Self.valid { $0.bandwidthLimit = 1_048_576 })
        #expect(Self.valid { $0.bandwidthLimit = 1e13 })
        #expect(!Self.valid { $0.bandwidthLimit = 1_048_575 })
        #expect(!Self.valid { $0.bandwidthLimit = 1e13.nextUp })
        #expect(!Self.valid { $0.bandwidthLimit = 0 })
        #expect(!Self.valid { $0.bandwidthLimit = .nan })
    }

    @Test func streamsAreOneTo64() {
        #expect(Self.valid { $0.streams = 1 })
        #expect(Self.valid { $0.streams = 64 })
        #expect(!Self.valid { $0.streams = 0 })
        #expect(!Self.valid { $0.streams = 65 })
    }

    @Test func compressionIsOffOrAZstdLevelOneTo22() {
        #expect(Self.valid { $0.compressionLevel = nil })
        #expect(Self.valid { $0.compressionLevel = 1 })
        #expect(Self.valid { $0.compressionLevel = 22 })
        #expect(!Self.valid { $0.compressionLevel = 0 })
        #expect(!Self.valid { $0.compressionLevel = 23 })
        #expect(!Self.valid { $0.compressionLevel = -1 }) // a zstd "fast" level: not on the wire
    }

    @Test func maxTimeIsOneMillisecondToOneDay() {
        #expect(Self.valid { $0.maxTime = 0.001 })
        #expect(Self.valid { $0.maxTime = 86_400 })
        #expect(!Self.valid { $0.maxTime = 0.000999 })
        #expect(!Self.valid { $0.maxTime = 86_400.001 })
        #expect(!Self.valid { $0.maxTime = .infinity })
    }

    @Test func batchSizeTimeoutAndCacheAreChecked() {
        #expect(Self.valid { $0.batchPages = 1 })
        #expect(Self.valid { $0.batchPages = 1024 })
        #expect(!Self.valid { $0.batchPages = 0 })
        #expect(!Self.valid { $0.batchPages = 1025 })
        #expect(!Self.valid { $0.timeout = 0 })
        #expect(!Self.valid { $0.timeout = .infinity })
        #expect(!Self.valid { $0.deltaCacheBytes = -1 })
    }

    /// The wire's spellings: milliseconds, 0 for "no cap" and for "no compression".
    @Test func theWireFormMapsOntoTheOptions() throws {
        func decode(_ json: String) throws -> MigrationOptions {
            try JSONValue(parsing: Data(json.utf8)).decode(MigrationOptions.self)
        }
        let o = try decode(#"{"downtime_ms": 1, "bandwidth": 0, "compression": 0, "max_time_s": 86400}"#)
        #expect(o.downtimeTarget == 0.001 && o.bandwidthLimit == nil && o.compressionLevel == nil && o.maxTime == 86_400)
        #expect((try? o.validate()) != nil)
        #expect(try decode(#"{"downtime_ms": 600000}"#).downtimeTarget == 600)
        #expect((try? decode(#"{"downtime_ms": 600000.5}"#).validate()) == nil)
        var back = MigrationOptions()
        back.downtimeTarget = 0.25
        back.compressionLevel = 22
        #expect(try JSONValue(encoding: back).decode(MigrationOptions.self) == back)
    }

    /// A compression level outside 1–22 used to reach `PageBatchEncoder`'s precondition (the
    /// engine did not check it): now `migrate` refuses it before it touches the VM or the
    /// network.
    @Test(.enabled(if: KVMGate.present, "needs /dev/kvm"))
    func aBadCompressionLevelIsRefusedBeforeAnyPageIsEncoded() throws {
        let machine = try Machine(restoring: Machine.Configuration(memorySize: 4 << 20, kernel: [], console: ConsoleBuffer()))
        for level: Int32 in [0, 23, -5, .max] {
            var options = MigrationOptions()
            options.compressionLevel = level
            let sender = MigrationSender(machine: machine, name: "bad-level", kernelSHA256: [UInt8](repeating: 0, count: 32),
                                         options: options)
            // Port 1 on loopback: were the options not checked first, this would fail differently.
            #expect {
                try sender.migrate(to: "127.0.0.1", port: 1, tls: TLSMode.insecure)
            } throws: { error in
                guard case let .invalidOptions(why) = error as? MigrationError else { return false }
                return why.contains("compression")
            }
        }
    }
}
