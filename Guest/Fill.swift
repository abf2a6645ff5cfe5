// `fill=MiB` (protocol.md §1.7): before its workload starts, the guest writes
// this much RAM above the working set once, with `mixed` content (about 2.5×
// with zstd) and each page's frame number in its first word, so that no two
// pages are alike. It gives the guest a resident size independent of what its
// workload dirties: the memory a migration must move once and then only check.
// The filled RAM is neither ballooned nor written again.

enum Fill {
    static func run(_ kernel: Kernel) {
        var random = Random(seed: kernel.options.seed ^ 0x6669_6c6c, stream: 0)  // "fill"
        var bytes: UInt64 = 0
        kernel.layout.forEachFillRange(startInfo: kernel.startInfo) { start, end in
            var gpa = start
            while gpa < end {
                // Sound: Layout took the range from RAM below the identity-mapped limit.
                guard let page = UnsafeMutablePointer<UInt64>(bitPattern: UInt(gpa)) else { return }
                _ = Content.mixed(page, 0, Int(Layout.pageSize / 8), &random, readOld: false)
                page[0] = gpa / Layout.pageSize
                gpa &+= Layout.pageSize
            }
            bytes &+= end &- start
        }
        var line = ConsoleLine("pvguest: fill ")
        line.append(decimal: bytes >> 20)
        line.append(" MiB done")
        line.emit()
    }
}
