// Where the guest keeps its bookkeeping (protocol.md §2.2–2.3, §2.9).
//
//   1 MiB            image (.text, .data with the page tables, .bss with the
//                    stack, the VIF page and the IDT), ending at `_end`
//   _end             control page (one page)
//                    vCPU areas (one page per vCPU 1..<n, protocol.md §2.10)
//                    SMP page (the VCPU_START block and the vCPUs' handshakes;
//                    only with several vCPUs)
//                    dirty rings (16384 × u64 = 128 KiB per vCPU)
//                    de-duplication bitmaps (per vCPU, 1 bit per page of RAM
//                    below the identity-mapped limit), up to a page boundary
//                    with several vCPUs: VIF pages and 16 KiB stacks of vCPUs 1..<n
//                    the PV NIC's area (NetArea: net page, rings, buffers, the
//                    key-value store), only for workloads that use the NIC
//   ---------------- everything above is ONE always-dirty range
//                    version table (u32 per working-set page and writer, §2.9):
//                    logged like any other page when the guest updates it
//   next 2 MiB       the working set (`mib` MiB for `dirty`, empty otherwise)
//   ...              filled RAM (`fill` MiB, written once at boot, §1.7)
//   ...              free RAM: ballooned at boot when the host offers it

struct Layout {
    static let pageSize: UInt64 = 4096
    static let ringEntries: UInt32 = 16384
    static let imageStart: UInt64 = 0x10_0000
    static let workingSetAlignment: UInt64 = 2 << 20
    /// The host refuses more always-dirty memory than this (§2.2).
    static let alwaysDirtyLimit: UInt64 = 256 << 20
    /// REGISTER's argument has 20 bits: the control page must lie below 4 GiB.
    static let maximumControlPFN: UInt64 = 0xf_ffff

    let controlPage: UInt64
    /// vCPUs the layout has rings for (1 without VCPU_START).
    let vcpus: UInt64
    let vcpuAreas: UInt64
    let smpPage: UInt64
    /// vCPU 0's ring and bitmap; vCPU k's follow at k × their sizes (`ring(_:)`, `dedupBitmap(_:)`).
    let ring: UInt64
    let dedupBitmap: UInt64
    /// vCPUs 1..<n: their VIF pages (§1.6) and stacks (empty with one vCPU).
    let apVIFPages: UInt64
    let apStacks: UInt64
    static let apStackSize: UInt64 = 16384
    /// The bitmap covers PFNs `0..<dedupPages`.
    let dedupPages: UInt64
    let dedupWords: UInt64
    /// The PV NIC's area (`NetArea.bytes` long), 0 when the workload has no NIC.
    let netArea: UInt64
    /// End of the always-dirty range (page-aligned end of the bitmap).
    let alwaysDirtyEnd: UInt64
    let versionTable: UInt64
    let workingSet: UInt64
    let workingSetPages: UInt64
    /// Writers of every working-set page: 1, or the vCPUs with a shared set (`share=1`, §2.9).
    let writersPerPage: UInt64
    /// End of the highest RAM range (exclusive).
    let ramEnd: UInt64
    /// RAM above the working set that `fill` writes once (the first bytes of it, below the
    /// identity-mapped limit); the rest is free.
    let fillBytes: UInt64

    var workingSetEnd: UInt64 { workingSet &+ workingSetPages &* Self.pageSize }
    var alwaysDirtyPages: UInt64 { (alwaysDirtyEnd - Self.imageStart) / Self.pageSize }
    var controlPagePFN: UInt64 { controlPage / Self.pageSize }

    static func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64 {
        (value &+ alignment &- 1) & ~(alignment &- 1)
    }

    /// The layout `options` ask for on `vcpus` vCPUs (the same on every vCPU).
    init(startInfo: StartInfo, options: BootOptions, vcpus: UInt64, withNet: Bool = false) {
        let dirty = options.workload == .dirty
        self.init(startInfo: startInfo, workingSetMiB: dirty ? options.mib : 0, fillMiB: options.fill, vcpus: vcpus,
                  writersPerPage: dirty && options.sharePages ? vcpus : 1, withNet: withNet)
    }

    /// Lays out the bookkeeping for a working set of `workingSetMiB` MiB and
    /// checks that everything fits in RAM; panics with the reason otherwise.
    init(startInfo: StartInfo, workingSetMiB: UInt64, fillMiB: UInt64 = 0, vcpus: UInt64 = 1,
         writersPerPage: UInt64 = 1, withNet: Bool = false) {
        self.vcpus = vcpus  // 1...SMP.maximumVCPUs
        self.writersPerPage = writersPerPage  // 1...vcpus
        ramEnd = startInfo.ramEnd
        fillBytes = fillMiB << 20  // fillMiB <= 2^32 (BootOptions): no overflow
        let covered = Self.alignUp(ramEnd < CPU.mappedLimit ? ramEnd : CPU.mappedLimit, Self.pageSize)
        dedupPages = covered / Self.pageSize
        dedupWords = (dedupPages &+ 63) / 64

        controlPage = Self.alignUp(CPU.imageEnd, Self.pageSize)
        vcpuAreas = controlPage &+ Self.pageSize
        smpPage = vcpuAreas &+ (vcpus &- 1) &* Self.pageSize
        // One vCPU: no areas and no SMP page, so the layout (and the always-dirty set) is
        // exactly the single-vCPU one.
        ring = vcpus > 1 ? smpPage &+ Self.pageSize : smpPage
        dedupBitmap = ring &+ vcpus &* UInt64(Self.ringEntries) &* 8
        apVIFPages = Self.alignUp(dedupBitmap &+ vcpus &* dedupWords &* 8, Self.pageSize)
        apStacks = apVIFPages &+ (vcpus &- 1) &* Self.pageSize
        let apEnd = apStacks &+ (vcpus &- 1) &* Self.apStackSize  // page-aligned: whole pages and stacks
        netArea = withNet ? apEnd : 0
        alwaysDirtyEnd = withNet ? apEnd &+ NetArea.bytes : apEnd

        // workingSetMiB <= 2^32 (BootOptions), so none of this overflows.
        workingSetPages = (workingSetMiB << 20) / Self.pageSize
        versionTable = alwaysDirtyEnd
        let tableEnd = Self.alignUp(versionTable &+ workingSetPages &* writersPerPage &* 4, Self.pageSize)
        workingSet = Self.alignUp(tableEnd, Self.workingSetAlignment)

        guard alwaysDirtyEnd <= CPU.mappedLimit,
              startInfo.ramContains(start: Self.imageStart, end: alwaysDirtyEnd),
              alwaysDirtyEnd - Self.imageStart <= Self.alwaysDirtyLimit,
              controlPage / Self.pageSize <= Self.maximumControlPFN
        else {
            var line = ConsoleLine("pvguest: panic: bookkeeping (image, control page, dirty ring, bitmap) up to ")
            line.append(hex: alwaysDirtyEnd)
            line.append(" does not fit in RAM")
            panic(line)
        }
        let end = workingSetEnd
        guard end <= CPU.mappedLimit, startInfo.ramContains(start: Self.imageStart, end: end) else {
            var line = ConsoleLine("pvguest: panic: dirty working set of ")
            line.append(decimal: workingSetMiB)
            line.append(" MiB at ")
            line.append(hex: workingSet)
            line.append(" (version table at ")
            line.append(hex: versionTable)
            line.append(") does not fit in RAM")
            panic(line)
        }
        var available: UInt64 = 0
        forEachRangeAboveWorkingSet(startInfo: startInfo) { start, end in
            let usable = end < CPU.mappedLimit ? end : CPU.mappedLimit
            if start < usable { available &+= usable - start }
        }
        guard fillBytes <= available else {
            var line = ConsoleLine("pvguest: panic: fill of ")
            line.append(decimal: fillMiB)
            line.append(" MiB does not fit: ")
            line.append(decimal: available >> 20)
            line.append(" MiB of RAM above the working set")
            panic(line)
        }
    }

    /// Zeroes the de-duplication bitmap and the version table (RAM is zero
    /// under pvmigrate, but not necessarily under every VMM).
    func clearBookkeeping() {
        Self.zero(gpa: dedupBitmap, words: vcpus &* dedupWords)
        if vcpus > 1 { Self.zero(gpa: smpPage, words: Self.pageSize / 8) }
        Self.zero(gpa: versionTable, words: (workingSetPages &* writersPerPage &+ 1) / 2)
    }

    static func zero(gpa: UInt64, words: UInt64) {
        // Sound: callers pass ranges of identity-mapped RAM checked by init.
        guard words > 0, let pointer = UnsafeMutablePointer<UInt64>(bitPattern: UInt(gpa)) else { return }
        var index = 0
        while index < Int(words) {
            pointer[index] = 0
            index += 1
        }
    }

    /// vCPU `k` (≥ 1)'s VIF page and the top of its stack.
    func vifPage(_ k: UInt64) -> UInt64 { apVIFPages &+ (k &- 1) &* Self.pageSize }
    func stackTop(_ k: UInt64) -> UInt64 { apStacks &+ k &* Self.apStackSize }

    /// vCPU `k`'s dirty ring and de-duplication bitmap.
    func ring(_ k: UInt64) -> UInt64 { ring &+ k &* UInt64(Self.ringEntries) &* 8 }
    func dedupBitmap(_ k: UInt64) -> UInt64 { dedupBitmap &+ k &* dedupWords &* 8 }

    /// vCPU `k`'s page for its ring and counters: the control page for vCPU 0, its area
    /// (§2.10) for the others.
    func area(_ k: UInt64) -> ControlPage {
        k == 0 ? ControlPage(gpa: controlPage) : ControlPage(gpa: vcpuAreas &+ (k &- 1) &* Self.pageSize)
    }

    /// The control page and its header, ready for REGISTER; with several vCPUs (ABI v2) also
    /// the vCPU areas, each naming its ring.
    func makeControlPage() -> ControlPage {
        let control = ControlPage(gpa: controlPage)
        control.initialize(ringGPA: ring, ringEntries: Self.ringEntries,
                           alwaysDirtyGPA: Self.imageStart, alwaysDirtyPages: alwaysDirtyPages)
        if vcpus > 1 {
            control.setVCPUAreas(count: UInt32(truncatingIfNeeded: vcpus &- 1), gpa: vcpuAreas)
            var k: UInt64 = 1
            while k < vcpus {
                area(k).initializeArea(ringGPA: ring(k), ringEntries: Self.ringEntries)
                k &+= 1
            }
        }
        return control
    }

    /// Calls `body(start, end)` for each page-aligned piece of RAM above the
    /// working set: the memory the guest never uses and gives to the balloon
    /// (the first `fillBytes` of it excepted).
    func forEachFreeRange(startInfo: StartInfo, _ body: (UInt64, UInt64) -> Void) {
        splitAboveWorkingSet(startInfo: startInfo, fill: { _, _ in }, free: body)
    }

    /// Calls `body(start, end)` for each piece of the `fillBytes` that `fill` writes.
    func forEachFillRange(startInfo: StartInfo, _ body: (UInt64, UInt64) -> Void) {
        splitAboveWorkingSet(startInfo: startInfo, fill: body, free: { _, _ in })
    }

    /// The RAM above the working set, first `fillBytes` of it (taken below the
    /// identity-mapped limit) to `fill`, the rest to `free`.
    private func splitAboveWorkingSet(startInfo: StartInfo, fill: (UInt64, UInt64) -> Void,
                                      free: (UInt64, UInt64) -> Void) {
        var toFill = fillBytes
        forEachRangeAboveWorkingSet(startInfo: startInfo) { start, end in
            var first = start
            let usable = end < CPU.mappedLimit ? end : CPU.mappedLimit
            if toFill > 0 && first < usable {
                let take = usable - first < toFill ? usable - first : toFill
                fill(first, first &+ take)
                toFill &-= take
                first &+= take
            }
            if first < end { free(first, end) }
        }
    }

    private func forEachRangeAboveWorkingSet(startInfo: StartInfo, _ body: (UInt64, UInt64) -> Void) {
        let floor = workingSetEnd
        startInfo.forEachRAMRange { start, end in
            let first = Self.alignUp(start > floor ? start : floor, Self.pageSize)
            let last = end & ~(Self.pageSize - 1)
            if first < last { body(first, last) }
        }
    }
}
