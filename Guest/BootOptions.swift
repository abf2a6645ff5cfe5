// The built-in guest's command line (protocol.md §1.7).

enum Workload {
    case idle, ticks, dirty, chaos, balloon, serve

    /// The control page's `workload` value (protocol.md §2.2).
    var code: UInt32 {
        switch self {
        case .idle: 0
        case .ticks: 1
        case .dirty: 2
        case .chaos: 3
        case .balloon: 4
        case .serve: 5
        }
    }
}

/// `dirty`: which page each write goes to.
enum Pattern {
    case sequential, random, hotspot
}

/// `dirty`: what a write puts into its window of the page.
enum Content {
    case stamp, random, mixed
}

/// Options parsed from space-separated `key=value` words.
struct BootOptions {
    var workload = Workload.idle
    var count: UInt64 = 10      // ticks: number of ticks, 0 = forever
    var interval: UInt64 = 100  // ticks: milliseconds between ticks
    var mib: UInt64 = 16        // dirty: working-set size in MiB
    var rate: UInt64 = 0        // dirty: pages per second, 0 = unlimited
    var passes: UInt64 = 1      // dirty: passes, 0 = forever
    var pattern = Pattern.sequential
    var hot: UInt64 = 10        // hotspot: percent of the pages that are hot
    var hotPercent: UInt64 = 90 // hotspot: percent of the writes that go to them
    var content = Content.stamp
    var change: UInt64 = 4096   // dirty: bytes of the page one write changes
    var seed: UInt64 = 1
    var progress: UInt64 = 1000 // dirty: milliseconds between progress lines, 0 = never
    var selfcheck = true        // dirty: verify all written pages after the last pass
    var fill: UInt64 = 0        // any workload: MiB of RAM to fill with data first
    var dropLog: UInt64 = 0     // chaos for tests: drop every Nth dirty report, 0 = never
    var ip: UInt32 = 0xc000_0202 // serve: IPv4 address (192.0.2.2)
    var prefix: UInt32 = 24     // serve: prefix length
    var vcpus: UInt64 = 0       // vCPUs to run (protocol.md §1.7), 0 = all the VM has
    var haltVCPU: UInt64 = 0    // for tests: this AP halts right after it comes up, 0 = none
    var exitVCPU: UInt64 = 0    // for tests: this AP ends the VM (status 1) once vCPU 0 writes, 0 = none
    var sharePages = false      // dirty: every vCPU writes every page, each its own slot (§2.9)
    var apStartBySIPI = false   // start the other vCPUs by INIT/SIPI even where VCPU_START exists
    var netSleep = true         // serve: use NET_SLEEP where the host offers it (0: kick, as net page v2)
    private var quiet = false

    /// Numeric values above this are rejected as malformed (keeps all
    /// derived arithmetic, such as `mib << 20` or `interval * kHz`, in range).
    static let maximumValue: UInt64 = 0xffff_ffff

    /// Parses `text` (NUL-terminated, at most `StartInfo.maximumCommandLine`
    /// bytes); unknown keys and malformed values are reported and ignored.
    /// `quiet`: parse without reporting (an AP re-reads what vCPU 0 already reported).
    init(commandLine text: UnsafePointer<UInt8>?, quiet: Bool = false) {
        self.quiet = quiet
        guard let text else { return }
        var index = 0
        while index < StartInfo.maximumCommandLine && text[index] != 0 {
            if Self.isSeparator(text[index]) {
                index += 1
                continue
            }
            let start = index
            while index < StartInfo.maximumCommandLine && text[index] != 0
                && !Self.isSeparator(text[index]) {
                index += 1
            }
            apply(Word(start: text + start, count: index - start))
        }
    }

    private static func isSeparator(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d
    }

    private mutating func apply(_ word: Word) {
        guard let equals = word.firstIndex(of: 0x3d) else {
            warn("warning: malformed option ", word)
            return
        }
        let key = word.prefix(equals)
        let value = word.suffix(from: equals + 1)
        if key == "workload" {
            if value == "idle" { workload = .idle }
            else if value == "ticks" { workload = .ticks }
            else if value == "dirty" { workload = .dirty }
            else if value == "chaos" { workload = .chaos }
            else if value == "balloon" { workload = .balloon }
            else if value == "serve" { workload = .serve }
            else { warnValue(key, value) }
        } else if key == "pattern" {
            if value == "seq" { pattern = .sequential }
            else if value == "random" { pattern = .random }
            else if value == "hotspot" { pattern = .hotspot }
            else { warnValue(key, value) }
        } else if key == "content" {
            if value == "stamp" { content = .stamp }
            else if value == "random" { content = .random }
            else if value == "mixed" { content = .mixed }
            else { warnValue(key, value) }
        } else if key == "count" {
            setNumber(&count, key, value, minimum: 0)
        } else if key == "interval" {
            setNumber(&interval, key, value, minimum: 0)
        } else if key == "mib" {
            setNumber(&mib, key, value, minimum: 1)
        } else if key == "rate" {
            setNumber(&rate, key, value, minimum: 0)
        } else if key == "passes" {
            setNumber(&passes, key, value, minimum: 0)
        } else if key == "hot" {
            setNumber(&hot, key, value, minimum: 1, maximum: 100)
        } else if key == "hotpct" {
            setNumber(&hotPercent, key, value, minimum: 0, maximum: 100)
        } else if key == "change" {
            setNumber(&change, key, value, minimum: 8, maximum: 4096)
        } else if key == "seed" {
            setNumber(&seed, key, value, minimum: 0, maximum: UInt64.max)
        } else if key == "fill" {
            setNumber(&fill, key, value, minimum: 0)
        } else if key == "droplog" {
            setNumber(&dropLog, key, value, minimum: 0)
        } else if key == "vcpus" {
            setNumber(&vcpus, key, value, minimum: 1, maximum: 8)
        } else if key == "haltcpu" {
            setNumber(&haltVCPU, key, value, minimum: 1, maximum: 7)
        } else if key == "exitcpu" {
            setNumber(&exitVCPU, key, value, minimum: 1, maximum: 7)
        } else if key == "progress" {
            setNumber(&progress, key, value, minimum: 0)
        } else if key == "ip" {
            if let (address, length) = value.ipv4WithPrefix {
                ip = address
                prefix = length
            } else {
                warnValue(key, value)
            }
        } else if key == "apstart" {
            if value == "pv" { apStartBySIPI = false }
            else if value == "sipi" { apStartBySIPI = true }
            else { warnValue(key, value) }
        } else if key == "share" {
            var flag: UInt64 = sharePages ? 1 : 0
            setNumber(&flag, key, value, minimum: 0, maximum: 1)
            sharePages = flag == 1
        } else if key == "netsleep" {
            var flag: UInt64 = netSleep ? 1 : 0
            setNumber(&flag, key, value, minimum: 0, maximum: 1)
            netSleep = flag == 1
        } else if key == "selfcheck" {
            var flag: UInt64 = selfcheck ? 1 : 0
            setNumber(&flag, key, value, minimum: 0, maximum: 1)
            selfcheck = flag == 1
        } else {
            warn("warning: unknown key ", key)
        }
    }

    private func setNumber(_ target: inout UInt64, _ key: Word, _ value: Word, minimum: UInt64,
                           maximum: UInt64 = BootOptions.maximumValue) {
        if let number = value.decimalValue, number >= minimum, number <= maximum {
            target = number
        } else {
            warnValue(key, value)
        }
    }

    private func warn(_ message: StaticString, _ word: Word) {
        if quiet { return }
        var line = ConsoleLine("pvguest: ")
        line.append(message)
        line.append(bytes: word.start, count: word.count)
        line.emit()
    }

    private func warnValue(_ key: Word, _ value: Word) {
        if quiet { return }
        var line = ConsoleLine("pvguest: warning: bad value for ")
        line.append(bytes: key.start, count: key.count)
        line.append(": ")
        line.append(bytes: value.start, count: value.count)
        line.emit()
    }
}

/// A slice of the command line (no copies: the guest does not allocate).
struct Word {
    let start: UnsafePointer<UInt8>
    let count: Int

    func firstIndex(of byte: UInt8) -> Int? {
        var index = 0
        while index < count {
            if start[index] == byte { return index }
            index += 1
        }
        return nil
    }

    func prefix(_ length: Int) -> Word { Word(start: start, count: length) }
    func suffix(from index: Int) -> Word { Word(start: start + index, count: count - index) }

    static func == (word: Word, text: StaticString) -> Bool {
        guard word.count == text.utf8CodeUnitCount else { return false }
        let bytes = text.utf8Start
        var index = 0
        while index < word.count {
            if word.start[index] != bytes[index] { return false }
            index += 1
        }
        return true
    }

    /// `a.b.c.d/n` as an address (host order) and a prefix length 1–32, or nil.
    var ipv4WithPrefix: (UInt32, UInt32)? {
        guard let slash = firstIndex(of: 0x2f),
              let length = suffix(from: slash + 1).decimalValue, length >= 1, length <= 32 else { return nil }
        var address: UInt32 = 0
        var parts = 0
        var first = 0
        var index = 0
        while index <= slash {
            if index == slash || start[index] == 0x2e {
                guard let octet = Word(start: start + first, count: index - first).decimalValue,
                      octet <= 255, parts < 4 else { return nil }
                address = address << 8 | UInt32(octet)
                parts += 1
                first = index + 1
            }
            index += 1
        }
        guard parts == 4 else { return nil }
        return (address, UInt32(length))
    }

    /// The word as an unsigned decimal, or nil if it is empty, has a
    /// non-digit or overflows.
    var decimalValue: UInt64? {
        guard count > 0 else { return nil }
        var value: UInt64 = 0
        var index = 0
        while index < count {
            let byte = start[index]
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - 0x30))
            if overflow1 || overflow2 { return nil }
            value = sum
            index += 1
        }
        return value
    }
}
