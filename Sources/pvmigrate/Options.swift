import ArgumentParser

/// A memory size: a number with an optional K/M/G/T suffix (binary units), e.g. 256M, 1G.
struct MemorySize: ExpressibleByArgument, CustomStringConvertible {
    let bytes: UInt64

    init?(argument: String) {
        var text = argument.uppercased()
        for suffix in ["IB", "B"] where text.hasSuffix(suffix) { text.removeLast(suffix.count) }
        let shift: UInt64
        switch text.last {
        case "K": shift = 10
        case "M": shift = 20
        case "G": shift = 30
        case "T": shift = 40
        default: shift = 20 // a bare number means MiB, like QEMU's -m
        }
        if text.last.map({ $0.isLetter }) == true { text.removeLast() }
        guard let n = UInt64(text), n > 0, n <= (UInt64.max >> shift) else { return nil }
        bytes = n << shift
    }

    var description: String {
        bytes % (1 << 30) == 0 ? "\(bytes >> 30)G" : "\(bytes >> 20)M"
    }

    static var defaultValueDescription: String { "256M" }
}
