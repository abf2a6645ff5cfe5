// Page stamps, the version table and the self-check (protocol.md §2.9, §2.7).
//
// A written page starts with the stamp { u64 pfn; u64 version; u64 checksum }.
// checksum = XOR over i in 3..<512 of rotl64(word[i], i % 64), word[i] being
// the page's i-th little-endian u64 (the host verifies the same formula).
// The version table holds the current version of every working-set page
// (u32; 0 = never written). Bit 31 marks a page found stale when it was about
// to be rewritten (see PageWriter): the self-check counts it bad.

enum Stamp {
    static let wordsPerPage = 512
    /// Words 0–2 are the stamp; the checksum covers the rest.
    static let firstWord = 3
    static let bodyWords = wordsPerPage - firstWord
    static let poison: UInt32 = 1 << 31
    static let versionMask: UInt32 = poison - 1

    /// rotl64(word, index % 64), the checksum's contribution of word `index`.
    @inline(__always)
    static func contribution(_ word: UInt64, _ index: Int) -> UInt64 {
        let shift = UInt64(index & 63)
        return (word &<< shift) | (word &>> (64 &- shift))
    }

    /// The checksum of the page's words 3..<512.
    static func checksum(_ page: UnsafePointer<UInt64>) -> UInt64 {
        var sum: UInt64 = 0
        var index = firstWord
        while index < wordsPerPage {
            sum ^= contribution(page[index], index)
            index += 1
        }
        return sum
    }
}

/// The working set and its version table, read-only helpers.
struct WorkingSet {
    let firstPFN: UInt64
    let pages: UInt64
    let table: UnsafeMutablePointer<UInt32>
    let tableGPA: UInt64

    init(layout: Layout) {
        firstPFN = layout.workingSet / Layout.pageSize
        pages = layout.workingSetPages
        tableGPA = layout.versionTable
        // Sound: Layout checked that the table and the working set are RAM.
        table = UnsafeMutablePointer(bitPattern: UInt(layout.versionTable))!
    }

    private init(firstPFN: UInt64, pages: UInt64, table: UnsafeMutablePointer<UInt32>, tableGPA: UInt64) {
        self.firstPFN = firstPFN; self.pages = pages; self.table = table; self.tableGPA = tableGPA
    }

    /// vCPU `k`'s share when `n` vCPUs split the set (`dirty` on several vCPUs, §1.7): a
    /// contiguous slice, so no page has two writers.
    func slice(_ k: UInt64, of n: UInt64) -> WorkingSet {
        let start = pages &* k / n, end = pages &* (k &+ 1) / n
        return WorkingSet(firstPFN: firstPFN &+ start, pages: end &- start, table: table + Int(start),
                          tableGPA: tableGPA &+ start &* 4)
    }

    @inline(__always)
    func page(_ index: UInt64) -> UnsafeMutablePointer<UInt64> {
        // Sound: index < pages, inside the working set Layout checked.
        UnsafeMutablePointer(bitPattern: UInt((firstPFN &+ index) &* Layout.pageSize))!
    }

    /// PFN of the version-table page that holds entry `index`.
    @inline(__always)
    func tablePFN(_ index: UInt64) -> UInt64 { (tableGPA &+ index &* 4) / Layout.pageSize }
}

enum Selfcheck {
    /// Verifies every page with a version: its stamp's PFN, its stamp's
    /// version against the table, and its checksum. Only reads the working set.
    static func verify(_ set: WorkingSet) -> (pages: UInt64, bad: UInt64) {
        var pages: UInt64 = 0
        var bad: UInt64 = 0
        var index: UInt64 = 0
        while index < set.pages {
            let entry = set.table[Int(index)]
            if entry != 0 {
                pages &+= 1
                let page = set.page(index)
                if entry & Stamp.poison != 0
                    || page[0] != set.firstPFN &+ index
                    || page[1] != UInt64(entry)
                    || page[2] != Stamp.checksum(page) {
                    bad &+= 1
                }
            }
            index &+= 1
        }
        return (pages, bad)
    }

    /// Runs a self-check: selfcheck_state 1, then the result, then
    /// selfcheck_done = the request it answers (§2.7); prints the result line.
    static func run(_ set: WorkingSet, control: ControlPage) {
        let request = control.selfcheckRequest
        control.setSelfcheckState(ControlPage.selfcheckRunning)
        // The other vCPUs park between two page writes while the set is read (SMP.swift).
        let result = SMP.current.withOthersParked { verify(set) }
        control.setSelfcheckResult(state: result.bad == 0 ? ControlPage.selfcheckPassed : ControlPage.selfcheckFailed,
                                   pages: result.pages, bad: result.bad)
        control.selfcheckDone = request
        var line = ConsoleLine("pvguest: selfcheck: ")
        line.append(decimal: result.pages)
        line.append(" pages, ")
        line.append(decimal: result.bad)
        line.append(" bad")
        line.emit()
    }

    /// Runs a self-check if the host asked for one (a load and a compare).
    @inline(__always)
    static func poll(_ set: WorkingSet, control: ControlPage) {
        if control.selfcheckRequest != control.selfcheckDone {
            run(set, control: control)
        }
    }
}

/// Writes working-set pages: version, content, stamp (§1.7 content/change).
struct PageWriter {
    let set: WorkingSet
    let content: Content
    /// Words of the window one write changes, 1...509 (509 = the whole body).
    let windowWords: Int
    let seed: UInt64

    init(set: WorkingSet, content: Content, changeBytes: UInt64, seed: UInt64) {
        self.set = set
        self.content = content
        let words = Int((changeBytes &+ 7) / 8)
        windowWords = words >= Stamp.bodyWords ? Stamp.bodyWords : (words < 1 ? 1 : words)
        self.seed = seed
    }

    var isPartial: Bool { windowWords < Stamp.bodyWords }
    /// 8-byte stores one page write makes (window + stamp).
    var storesPerWrite: UInt64 { UInt64(windowWords + Stamp.firstWord) }

    /// One page write: bumps the version (a logged write to the table page),
    /// then writes the window and the stamp (a logged write to the page).
    ///
    /// A partial write updates the checksum incrementally from the old stamp,
    /// so it first checks that the old stamp is the one the table expects; a
    /// page that is not (a write lost, e.g. by a migration) is poisoned for
    /// the self-check and its checksum recomputed from scratch.
    @inline(__always)
    func write(_ index: UInt64, log: inout DirtyLog) {
        let pfn = set.firstPFN &+ index
        let page = set.page(index)
        let entry = set.table[Int(index)]
        let oldVersion = entry & Stamp.versionMask
        var poison = entry & Stamp.poison
        let newVersion = oldVersion == Stamp.versionMask ? 1 : oldVersion &+ 1
        var recompute = false
        if isPartial {
            if oldVersion == 0 {
                recompute = true  // the rest of the page was never stamped
            } else if page[0] != pfn || page[1] != UInt64(oldVersion) {
                poison = Stamp.poison
                recompute = true
            }
        }

        let tablePFN = set.tablePFN(index)
        log.begin(tablePFN)
        set.table[Int(index)] = newVersion | poison
        log.end(tablePFN)

        log.begin(pfn)
        var random = Random(seed: seed ^ (pfn &<< 32) ^ UInt64(newVersion), stream: pfn)
        let start = isPartial
            ? Stamp.firstWord + Int(random.below(UInt64(Stamp.bodyWords - windowWords + 1)))
            : Stamp.firstWord
        let delta = fill(page, from: start, count: windowWords, random: &random)
        let checksum: UInt64
        if recompute {
            checksum = Stamp.checksum(page)
        } else if isPartial {
            checksum = page[2] ^ delta
        } else {
            checksum = delta
        }
        page[0] = pfn
        page[1] = UInt64(newVersion)
        page[2] = checksum
        log.end(pfn)
    }

    /// Writes words `from..<from+count` and returns the XOR of their new
    /// checksum contributions, and of their old ones for a partial write.
    @inline(__always)
    private func fill(_ page: UnsafeMutablePointer<UInt64>, from: Int, count: Int,
                      random: inout Random) -> UInt64 {
        let end = from + count
        switch content {
        case .stamp:
            return isPartial ? Content.zeroes(page, from, end, readOld: true)
                             : Content.zeroes(page, from, end, readOld: false)
        case .random:
            return isPartial ? Content.random(page, from, end, &random, readOld: true)
                             : Content.random(page, from, end, &random, readOld: false)
        case .mixed:
            return Content.mixed(page, from, end, &random, readOld: isPartial)
        }
    }
}
