import CFuzzer
import Glibc

/// One fuzz target: a decoder of untrusted bytes, the invariant checked on every input beyond
/// "does not crash", and seed inputs made with the real encoders.
protocol FuzzTarget {
    static var name: String { get }
    /// What `run` checks, for `pvmigrate-fuzz list` and docs/fuzzing.md.
    static var invariant: String { get }
    static func run(_ input: [UInt8])
    static func seeds() -> [[UInt8]]
}

nonisolated(unsafe) let targets: [any FuzzTarget.Type] = [
    FrameTarget.self, PagesTarget.self, DeltaTarget.self, StateTarget.self, ELFTarget.self, ControlTarget.self,
    SnapshotTarget.self,
]

/// Stops the run with `message` when an invariant does not hold: libFuzzer records the
/// input as a crash (the trap is a deadly signal to it).
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
           file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz invariant violated: \(message())", file: file, line: line) }
}

/// The harness the driver runs; set once before libFuzzer starts.
nonisolated(unsafe) var selected: (any FuzzTarget.Type)?

/// Usage:
///   pvmigrate-fuzz list
///   pvmigrate-fuzz seeds DIR            writes DIR/<target>/seed-N for every target
///   pvmigrate-fuzz TARGET [libFuzzer flags and corpus directories or crash files]
@main
enum FuzzMain {
    static func main() {
        let args = CommandLine.arguments
        guard args.count >= 2 else { usage() }
        switch args[1] {
        case "list":
            for t in targets { print("\(t.name): \(t.invariant)") }
        case "seeds":
            guard args.count == 3 else { usage() }
            writeSeeds(to: args[2])
        default:
            guard let target = targets.first(where: { $0.name == args[1] }) else { usage() }
            selected = target
            // libFuzzer sees argv without the target name.
            var argv: [UnsafeMutablePointer<CChar>?] = ([args[0]] + args.dropFirst(2)).map { strdup($0) } + [nil]
            var argc = Int32(argv.count - 1)
            let status = argv.withUnsafeMutableBufferPointer { buffer in
                var base = buffer.baseAddress
                return LLVMFuzzerRunDriver(&argc, &base) { data, size in
                    let input = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
                    selected!.run(input)
                    return 0
                }
            }
            exit(status)
        }
    }

    static func usage() -> Never {
        let names = targets.map { $0.name }.joined(separator: "|")
        print("usage: pvmigrate-fuzz list | seeds DIR | (\(names)) [libFuzzer arguments]")
        exit(2)
    }

    static func writeSeeds(to directory: String) {
        for t in targets {
            let dir = "\(directory)/\(t.name)"
            mkdir(directory, 0o755)
            mkdir(dir, 0o755)
            for (i, seed) in t.seeds().enumerated() {
                let path = "\(dir)/seed-\(i)"
                guard let f = fopen(path, "wb") else { fatalError("cannot write \(path)") }
                _ = seed.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
                fclose(f)
            }
        }
    }
}
