import ArgumentParser
import Foundation
import GuestImage

/// `pvmigrate guest …`: the built-in guest kernel.
struct Guest: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The built-in paravirtual guest kernel (pvguest).",
        subcommands: [Export.self])

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the embedded guest image (a PVH ELF) to a file, e.g. to boot it with QEMU.")

        @Argument(help: "Where to write the ELF image.")
        var file: String

        func run() throws {
            let url = URL(fileURLWithPath: file)
            do {
                try Data(GuestImage.elf).write(to: url)
            } catch {
                throw ValidationError("cannot write \(file): \(error.localizedDescription)")
            }
            print("wrote \(GuestImage.name) (\(GuestImage.elf.count) bytes) to \(file)")
        }
    }
}
