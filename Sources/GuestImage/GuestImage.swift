// The built-in guest kernel, pvguest (docs/protocol.md §1).
//
// Plugins/GuestBuilder compiles Guest/ at build time and generates
// `generatedGuestImageBase64`; the image is decoded once, on first use.
import Foundation

public enum GuestImage {
    /// The guest's name, as the CLI and logs show it.
    public static let name = "pvguest"

    /// The pvguest ELF image: a PVH-bootable x86-64 kernel.
    public static let elf: [UInt8] = {
        let text = generatedGuestImageBase64.withUTF8Buffer { String(decoding: $0, as: UTF8.self) }
        guard let data = Data(base64Encoded: text) else {
            // Unreachable unless the build produced a corrupt source.
            fatalError("GuestImage: the embedded pvguest image is not valid base64")
        }
        return [UInt8](data)
    }()
}
