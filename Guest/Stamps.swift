// Page stamps, the version table and the self-check (protocol.md §2.9, §2.7).
//
// A written page starts with the stamp { u64 pfn; u64 version; u64 checksum }.
// checksum = XOR over i in 3..<512 of rotl64(word[i], i % 64), word[i] being
// the page's i-th little-endian u64 (the host verifies the same formula).
// The version table holds the current version of every working-set page
// (u32; 0 = never written). Bit 31 marks a page found stale when it was about
// to be rewritten (see PageWriter): the self-check counts it bad.
//
// A shared working set (`share=1`, §1.7) has n writers per page: writer k owns
// slot k, words k·s ..< (k+1)·s of every page (s = 512 / n rounded down to a
// cache line), stamped and checksummed like a page of s words, and table entry
// page·n + k holds its version. With one writer the slot is the whole page.

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

    /// The checksum of a slot's words 3..<words (a whole page: words = 512).
    static func checksum(_ slot: UnsafePointer<UInt64>, words: Int) -> UInt64 {
        var sum: UInt64 = 0
        var index = firstWord
        while index < words {
            sum ^= contribution(slot[index], index)
            index += 1
        }
        return sum
    }

    /// Words of each writer's slot when `writers` vCPUs share every page: a whole number of
    /// 64-byte cache lines, so two writers never store to the same line.
    static func slotWords(writers: UInt64) -> Int {
        writers <= 1 ? wordsPerPage : (wordsPerPage / Int(writers)) & ~7
    }
}

/// The working set and its version table, read-only helpers. A view of one writer: the
/// whole set (`init(layout:)`, writer 0), a slice of its pages, or a slot of every page.
struct WorkingSet {
    let firstPFN: UInt64
    let pages: UInt64
    /// Writers per page (table entries per page): 1, or n with `share=1`.
    let writers: UInt64
    /// This view's writer: its slot in every page and its table entries.
    let writer: UInt64
    let slotWords: Int
    let table: UnsafeMutablePointer<UInt32>
    let tableGPA: UInt64

    init(layout: Layout) {
        firstPFN = layout.workingSet / Layout.pageSize
        pages = layout.workingSetPages
        writers = layout.writersPerPage
        writer = 0
        slotWords = Stamp.slotWords(writers: writers)
        tableGPA = layout.versionTable
        // Sound: Layout checked that the table and the working set are RAM.
        table = UnsafeMutablePointer(bitPattern: UInt(layout.versionTable))!
    }

    private init(_ base: WorkingSet, firstPage: UInt64, pages: UInt64, writer: UInt64) {
        firstPFN = base.firstPFN &+ firstPage
        self.pages = pages
        writers = base.writers
        self.writer = writer
        slotWords = base.slotWords
        let offset = firstPage &* base.writers
        table = base.table + Int(offset)
        tableGPA = base.tableGPA &+ offset &* 4
    }

    /// vCPU `k`'s share when `n` vCPUs split the set (`dirty` on several vCPUs, §1.7): a
    /// contiguous slice, so no page has two writers.
    func slice(_ k: UInt64, of n: UInt64) -> WorkingSet {
        let start = pages &* k / n, end = pages &* (k &+ 1) / n
        return WorkingSet(self, firstPage: start, pages: end &- start, writer: writer)
    }

    /// Writer `k`'s view of a shared set (`share=1`): every page, its own slot and entries.
    func slot(_ k: UInt64) -> WorkingSet { WorkingSet(self, firstPage: 0, pages: pages, writer: k) }

    /// Words of this view's slot after the stamp.
    var bodyWords: Int { slotWords - Stamp.firstWord }

    /// This writer's slot of page `index` (the page itself with one writer).
    @inline(__always)
    func page(_ index: UInt64) -> UnsafeMutablePointer<UInt64> {
        // Sound: index < pages, inside the working set Layout checked; the slot is inside the page.
        UnsafeMutablePointer<UInt64>(bitPattern: UInt((firstPFN &+ index) &* Layout.pageSize))!
            + Int(writer) &* slotWords
    }

    /// This writer's version-table entry of page `index`.
    @inline(__always)
    func entry(_ index: UInt64) -> UInt32 { table[Int(index &* writers &+ writer)] }

    @inline(__always)
    func setEntry(_ index: UInt64, _ value: UInt32) { table[Int(index &* writers &+ writer)] = value }

    /// PFN of the version-table page that holds this writer's entry of page `index`.
    @inline(__always)
    func tablePFN(_ index: UInt64) -> UInt64 { (tableGPA &+ (index &* writers &+ writer) &* 4) / Layout.pageSize }

    /// This writer's slot of page `index` holds version `entry`, intact: not poisoned, its
    /// stamp names the page and the version, and its checksum matches.
    func holds(_ entry: UInt32, at index: UInt64) -> Bool {
        let slot = page(index)
        return entry & Stamp.poison == 0 && slot[0] == firstPFN &+ index && slot[1] == UInt64(entry)
            && slot[2] == Stamp.checksum(slot, words: slotWords)
    }
}

enum Selfcheck {
    /// Verifies every page with a version: each written slot's stamp (PFN, version against
    /// the table) and checksum. A page is bad if any of its slots is. Only reads the set.
    static func verify(_ set: WorkingSet) -> (pages: UInt64, bad: UInt64) {
        var pages: UInt64 = 0
        var bad: UInt64 = 0
        var index: UInt64 = 0
        while index < set.pages {
            var written = false
            var intact = true
            var k: UInt64 = 0
            while k < set.writers {
                let slot = set.slot(k)
                let entry = slot.entry(index)
                if entry != 0 {
                    written = true
                    if !slot.holds(entry, at: index) { intact = false }
                }
                k &+= 1
            }
            if written { pages &+= 1 }
            if !intact { bad &+= 1 }
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
    /// Words of the window one write changes, 1...bodyWords (509 for a whole page).
    let windowWords: Int
    let seed: UInt64

    init(set: WorkingSet, content: Content, changeBytes: UInt64, seed: UInt64) {
        self.set = set
        self.content = content
        let words = Int((changeBytes &+ 7) / 8)
        windowWords = words >= set.bodyWords ? set.bodyWords : (words < 1 ? 1 : words)
        self.seed = seed
    }

    var isPartial: Bool { windowWords < set.bodyWords }
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
        let entry = set.entry(index)
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
        set.setEntry(index, newVersion | poison)
        log.end(tablePFN)

        log.begin(pfn)
        var random = Random(seed: seed ^ (pfn &<< 32) ^ UInt64(newVersion) ^ (set.writer &<< 56), stream: pfn)
        let start = isPartial
            ? Stamp.firstWord + Int(random.below(UInt64(set.bodyWords - windowWords + 1)))
            : Stamp.firstWord
        let delta = fill(page, from: start, count: windowWords, random: &random)
        let checksum: UInt64
        if recompute {
            checksum = Stamp.checksum(page, words: set.slotWords)
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
