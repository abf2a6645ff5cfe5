import ArgumentParser

/// pvmigrate: a KVM-based paravirtual VMM built around live migration.
@main
struct PVMigrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvmigrate",
        abstract: "A KVM-based paravirtual VMM built around live migration.",
        discussion: """
            Boots the built-in paravirtual guest (pvguest) or any PVH kernel on KVM.
            Migration (send/listen), named VMs and benchmarks are being built; see README.md.
            """,
        version: "0.1.0",
        subcommands: [Run.self, Guest.self, Bench.self])
}
