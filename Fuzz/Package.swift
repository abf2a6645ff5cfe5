// swift-tools-version:6.1
// libFuzzer harnesses for every decoder of untrusted bytes (docs/fuzzing.md).
// They link the real Core, Migrate and Control modules of the root package; scripts/fuzz.sh
// builds this package with `-sanitize=fuzzer,address` into its own scratch directory.
import PackageDescription

let package = Package(
    name: "pvmigrate-fuzz",
    dependencies: [
        .package(name: "pvmigrate", path: ".."),
    ],
    targets: [
        // Declares libFuzzer's LLVMFuzzerRunDriver for Swift, and exposes the KVM struct sizes
        // the saved-state seeds need.
        .target(name: "CFuzzer"),
        // One binary for all targets (one link, not five): its first argument names the harness,
        // the rest goes to libFuzzer (`pvmigrate-fuzz frame -runs=1000 corpus/`).
        .executableTarget(
            name: "pvmigrate-fuzz",
            dependencies: [
                "CFuzzer",
                .product(name: "Core", package: "pvmigrate"),
                .product(name: "Migrate", package: "pvmigrate"),
                .product(name: "Control", package: "pvmigrate"),
                .product(name: "TestSupport", package: "pvmigrate"),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
    ]
)
