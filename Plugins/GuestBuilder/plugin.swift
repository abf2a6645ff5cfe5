// GuestBuilder: compiles Guest/ (entry.S + Embedded Swift) into the pvguest
// ELF and generates one Swift source holding it for the GuestImage target.
//
// The work is done by Guest/build.sh (swiftc, clang, ld.lld); this plugin
// only finds the tools and declares inputs/outputs. Only the generated .swift
// is declared as an output: any other output would become a resource and pull
// Foundation into the target. After editing this file, `touch Package.swift`;
// plugin errors show only with `swift build -v`.
import Foundation
import PackagePlugin

@main
struct GuestBuilder: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let guest = context.package.directoryURL.appending(path: "Guest")
        let script = guest.appending(path: "build.sh")
        let work = context.pluginWorkDirectoryURL.appending(path: "pvguest")
        let output = context.pluginWorkDirectoryURL.appending(path: "GuestImageData.swift")

        let inputs = try FileManager.default
            .contentsOfDirectory(at: guest, includingPropertiesForKeys: nil)
            .filter { !$0.lastPathComponent.hasPrefix(".") }
            .sorted { $0.path < $1.path }

        return [
            .buildCommand(
                displayName: "Building guest kernel pvguest",
                executable: URL(filePath: "/bin/sh"),
                arguments: [
                    script.path,
                    try context.tool(named: "swiftc").url.path,
                    try context.tool(named: "clang").url.path,
                    try context.tool(named: "ld.lld").url.path,
                    work.path,
                    output.path,
                ],
                inputFiles: inputs,
                outputFiles: [output]
            ),
        ]
    }
}
