import Glibc

/// Page-level views of guest RAM: dense page indices, pages the VMM wrote, host residency
/// and discard.
extension GuestMemory {
    public static let pageSize = Int(GuestPhysicalAddress.pageSize)

    /// Total RAM pages (the size of every PageBitmap over this memory).
    public var pageCount: Int { Int(size / GuestPhysicalAddress.pageSize) }

    /// The RAM page index of `frame`, or nil when the frame is not RAM.
    public func pageIndex(of frame: PageFrame) -> Int? {
        var base = 0
        for region in regions {
            let first = region.range.start.raw / GuestPhysicalAddress.pageSize
            if frame.number >= first, frame.number - first < UInt64(region.pageCount) {
                return base + Int(frame.number - first)
            }
            base += region.pageCount
        }
        return nil
    }

    /// The frame at RAM page index `index`, or nil when out of range.
    public func frame(atIndex index: Int) -> PageFrame? {
        guard index >= 0 else { return nil }
        var i = index
        for region in regions {
            if i < region.pageCount { return PageFrame(region.range.start.raw / GuestPhysicalAddress.pageSize + UInt64(i)) }
            i -= region.pageCount
        }
        return nil
    }

    /// The first RAM page index of each region (for merging per-slot KVM bitmaps).
    public var regionPageOffsets: [Int] {
        var offsets: [Int] = []
        var base = 0
        for r in regions { offsets.append(base); base += r.pageCount }
        return offsets
    }

    /// Host bytes of one RAM page by index. Sound: `frame(atIndex:)` only returns RAM frames.
    public func page(atIndex index: Int) -> UnsafeMutableRawBufferPointer? {
        guard let frame = frame(atIndex: index), let address = frame.address else { return nil }
        return try? bytes(at: address, count: GuestPhysicalAddress.pageSize)
    }

    /// Pages resident in host memory (mincore), as a bitmap: pages the guest never touched
    /// (or that were discarded) are absent, so they cannot hold data. Memory mapped from a
    /// file adds the pages the file holds data for (`fileDataPages`): such a page holds data
    /// while it is only in the file; a page the guest wrote is resident (its private copy).
    public func residentPages() -> PageBitmap {
        var bitmap = PageBitmap(pageCount: pageCount)
        for (region, offset) in zip(regions, regionPageOffsets) {
            var vec = [UInt8](repeating: 0, count: region.pageCount)
            // Sound: the region's mapping is page-aligned and `vec` has one byte per page.
            guard mincore(region.host, Int(region.range.size), &vec) == 0 else {
                bitmap.insert(range: offset, count: region.pageCount) // unknown: assume resident
                continue
            }
            for (i, v) in vec.enumerated() where v & 1 != 0 { bitmap.insert(offset + i) }
        }
        if let fileDataPages { bitmap.formUnion(fileDataPages) }
        return bitmap
    }

    /// Discards the host pages of a guest range (they read as zero afterwards). The range
    /// must be page-aligned and inside one region; returns false otherwise.
    @discardableResult
    public func discard(_ range: GuestRange) -> Bool {
        guard range.start.isPageAligned, range.size % GuestPhysicalAddress.pageSize == 0,
              let (region, offset) = locate(range.start, count: range.size) else { return false }
        if region.isFileBacked {
            // Dropping a private file page would bring the file's bytes back: map fresh
            // anonymous zero pages over the range instead (KVM follows the new mapping
            // through its MMU notifier). Sound: the range lies inside this region's mapping,
            // which this region owns; MAP_FIXED replaces exactly those pages.
            let p = mmap(region.host + Int(offset), Int(range.size), PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
            return p != MAP_FAILED
        }
        // Sound: `locate` proved the range lies inside this region's private anonymous mapping.
        return madvise(region.host + Int(offset), Int(range.size), MADV_DONTNEED) == 0
    }
}
