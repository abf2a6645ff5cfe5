// swift-tools-version:6.1
// pvmigrate: a KVM-based paravirtual VMM built around live migration.
// Layering (docs/architecture.md): pvmigrate -> Control -> Migrate -> Core -> CKVM, all over Posix, plus GuestImage and Config (the CLI's config files).
import PackageDescription

let package = Package(
    name: "pvmigrate",
    products: [
        .executable(name: "pvmigrate", targets: ["pvmigrate"]),
        .library(name: "Core", targets: ["Core"]),
        .library(name: "Migrate", targets: ["Migrate"]),
        // For the fuzz harnesses (Fuzz/, scripts/fuzz.sh), which build against the real sources
        // and make their seed ELF files with the tests' builder.
        .library(name: "Control", targets: ["Control"]),
        .library(name: "TestSupport", targets: ["TestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // `listen --config FILE` (TOML); compiles the C++ toml++ (~35 CPU-s of a clean build).
        .package(url: "https://github.com/LebJe/TOMLKit", exact: "0.6.0"),
        // Logs and metrics (docs/operations.md): the Swift server ecosystem's APIs, and the
        // Prometheus exposition of the metrics.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // C shim over <linux/kvm.h>: ioctl request numbers and the helpers Swift cannot express.
        .target(name: "CKVM", path: "Sources/CKVM"),
        // System libraries from Debian's -dev packages.
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        .target(name: "COpenSSL", path: "Sources/COpenSSL", linkerSettings: [
            .linkedLibrary("ssl"), .linkedLibrary("crypto"),
        ]),
        // The built-in guest kernel, compiled from Guest/ by the GuestBuilder plugin.
        .target(name: "GuestImage", path: "Sources/GuestImage",
                plugins: [.plugin(name: "GuestBuilder")]),
        .plugin(name: "GuestBuilder", capability: .buildTool(), path: "Plugins/GuestBuilder"),
        // The system layer: a retrying `syscall` helper, `Errno` (the one errno formatter), the
        // owning `FileDescriptor` that both socket wrappers and the KVM descriptors use.
        .target(name: "Posix"),
        .target(name: "Core", dependencies: ["CKVM", "Posix"]),
        .target(name: "Migrate", dependencies: ["Core", "Posix", "CZstd", "COpenSSL"]),
        // The PV NIC's host side: TAP devices, bridges and the per-NIC I/O thread (protocol.md §5).
        .target(name: "Net", dependencies: ["Core", "CKVM", "Posix"]),
        // `bench --net` and `demo --net` (issue 14): the namespaces they run in, the UDP request
        // generator, ping's output, and the client-side statistics (pure, tested without KVM).
        .target(name: "NetBench", dependencies: ["Core", "CKVM", "Posix"]),
        // Named VMs: runtime directory, per-VM control sockets (protocol.md §4), console buffers.
        .target(name: "Control", dependencies: [
            "Core", "Migrate", "Posix",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
        ]),
        // `listen --config FILE`: TOML files that mirror a command's flags. Apart from Control so
        // that only the CLI and its tests compile TOMLKit's C++ (not the fuzz harnesses).
        .target(name: "Config", dependencies: [.product(name: "TOMLKit", package: "TOMLKit")]),
        // Operating the daemon (docs/operations.md): the log backend, the Prometheus registry
        // and the /metrics responder, the record `send` keeps for `pvmigrate metrics`.
        .target(name: "Operations", dependencies: [
            "Core", "Migrate", "Control",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .executableTarget(name: "pvmigrate", dependencies: [
            "Core", "Migrate", "Control", "Config", "Operations", "Net", "NetBench", "Posix", "GuestImage",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Helpers shared by the test targets: an ELF builder and the /dev/kvm gate.
        .target(name: "TestSupport", dependencies: ["Core", "NetBench"], path: "Tests/TestSupport"),
        .testTarget(name: "CoreTests", dependencies: ["Core", "CKVM", "Posix", "TestSupport"]),
        .testTarget(name: "MigrateTests", dependencies: ["Core", "Migrate", "TestSupport"]),
        // The PV NIC without KVM or TAP: net page and descriptor validation, event indices, --net.
        .testTarget(name: "NetTests", dependencies: ["Core", "CKVM", "Net", "Posix", "TestSupport"]),
        // bench --net's statistics, request plan, consistency checks and ping parsing.
        .testTarget(name: "NetBenchTests", dependencies: ["NetBench"]),
        // The control plane without VMs or sockets: request/response coding, option checks,
        // endpoints, arrival names (one test needs /dev/kvm and skips without it).
        .testTarget(name: "ControlTests", dependencies: [
            "Core", "Migrate", "Control", "Config", "Operations", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .testTarget(name: "EndToEndTests", dependencies: ["Core", "Migrate", "Control", "Config", "Operations", "GuestImage", "NetBench",
                                                          "TestSupport"]),
    ]
)
