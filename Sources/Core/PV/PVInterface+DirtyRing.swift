import CKVM

/// The guest's dirty ring, host side (protocol.md §2.3–2.4).
extension PVInterface {
    /// What one PV harvest found.
    public struct Harvest: Sendable {
        /// Pages the guest logged (plus the in-flight page when harvested paused).
        public var logged: PageBitmap
        /// The guest's always-dirty ranges, as pages.
        public var alwaysDirty: PageBitmap
        /// The ring was corrupt at some drain since the last harvest: treat every page as dirty.
        public var untrustworthy: Bool
    }

    /// Switches the guest's dirty logging on or off (the LOGGING host flag). False when the
    /// guest has not registered a control page.
    @discardableResult
    public func setLogging(_ on: Bool) -> Bool {
        lock.withLock {
            guard let control else { return false }
            var flags = ControlPage.HostFlags(rawValue: control.u32(.hostFlags))
            if on { flags.insert(.logging) } else { flags.remove(.logging) }
            hostStoreAll(.hostFlags, flags.rawValue)
            if on { // start a fresh epoch: nothing logged before this point counts
                drainLocked()
                pending.removeAll()
                ringCorrupt = false
                hostStoreAll(.generation, control.u32(.generation) &+ 1)
            }
            return true
        }
    }

    /// Drains the ring, takes the pending set and starts a new generation (§2.4). With
    /// `vcpusPaused` the in-flight page is added: only then is it stable.
    public func harvest(vcpusPaused: Bool) -> Harvest? {
        var logged = PageBitmap(pageCount: memory.pageCount), always = logged
        let untrustworthy: Bool? = lock.withLock {
            guard let corrupt = harvestLocked(vcpusPaused: vcpusPaused, into: &logged) else { return nil }
            insertAlwaysDirtyLocked(into: &always)
            return corrupt
        }
        return untrustworthy.map { Harvest(logged: logged, alwaysDirty: always, untrustworthy: $0) }
    }

    /// The same harvest, the always-dirty ranges kept apart: the logged pages are ORed into
    /// `pages` (of the guest's page count) at a cost that follows what the guest logged (no
    /// bitmap allocated or walked whole); the ranges come back as page-index ranges (a handful,
    /// §2.2) for the caller to add whole, or only in part when KVM's log vouches for them
    /// (`AlwaysDirtyFilter`, §3.5.1). Nil when the guest has no control page (`pages` untouched).
    public func harvestApart(vcpusPaused: Bool, into pages: inout PageBitmap) -> (corrupt: Bool, alwaysDirty: [Range<Int>])? {
        lock.withLock {
            guard let corrupt = harvestLocked(vcpusPaused: vcpusPaused, into: &pages) else { return nil }
            return (corrupt, alwaysDirtyPageRangesLocked())
        }
    }

    /// The harvest's logged pages into `pages`; whether the ring was corrupt. Lock held.
    private func harvestLocked(vcpusPaused: Bool, into pages: inout PageBitmap) -> Bool? {
        guard let control else { return nil }
        drainLocked()
        pending.drain(into: &pages)
        // Every vCPU's in-flight slot (§2.10): each is stable only while all are paused.
        for r in rings where vcpusPaused && r.area.u32(.inflightValid) == 1 {
            if let index = memory.pageIndex(of: PageFrame(r.area.u64(.inflightPFN))) { pages.insert(index) }
        }
        var corrupt = ringCorrupt
        ringCorrupt = false
        // Order: the drain's tail store, then the generation bump, then (the caller's)
        // page copies; a full fence keeps the guest from seeing them reordered.
        ckvm_full_fence()
        hostStoreAll(.generation, control.u32(.generation) &+ 1)
        // HARVEST_BARRIER (§2.3): every vCPU runs a full barrier now, so a page write whose
        // generation load still saw the old value is visible before the caller copies it.
        // Paused vCPUs passed through one when they stopped. If it cannot be done, a guest
        // relying on it may have skipped a page: the round is all-dirty (fail safe).
        if !vcpusPaused, HarvestBarrier.isAvailable, !HarvestBarrier.run() { corrupt = true }
        return corrupt
    }

    private func insertAlwaysDirtyLocked(into b: inout PageBitmap) {
        for r in alwaysDirtyPageRangesLocked() { b.insert(range: r.lowerBound, count: r.count) }
    }

    /// The guest's always-dirty memory (§2.2) as page-index ranges, as the next harvest
    /// would report it apart (`harvestApart`); empty before REGISTER.
    public var alwaysDirtyPageRanges: [Range<Int>] { lock.withLock { control == nil ? [] : alwaysDirtyPageRangesLocked() } }

    /// The always-dirty memory as page-index ranges: the guest's ranges (with its vCPU areas),
    /// every dirty ring, the control page. Each lies in one RAM region (validated at REGISTER),
    /// so its page indices are consecutive. Lock held.
    private func alwaysDirtyPageRangesLocked() -> [Range<Int>] {
        var out: [Range<Int>] = []
        for r in alwaysDirty {
            if let first = memory.pageIndex(of: r.start.frame) {
                out.append(first..<(first + Int(r.size / GuestPhysicalAddress.pageSize)))
            }
        }
        for r in rings {
            if let first = memory.pageIndex(of: r.range.start.frame) {
                out.append(first..<(first + Int((r.range.size + 4095) / 4096)))
            }
        }
        if let control, let i = memory.pageIndex(of: control.gpa.frame) { out.append(i..<(i + 1)) }
        return out
    }

    /// Moves valid entries of every vCPU's ring into `pending` and frees their slots. Lock held.
    func drainLocked() {
        for (vcpu, ring) in rings.enumerated() { drain(ring, vcpu: vcpu) }
    }

    private func drain(_ ring: VCPURing, vcpu: Int) {
        let area = ring.area
        let head = area.u32(.ringHead)
        let tail = area.u32(.ringTail)
        let used = head &- tail
        guard used <= ring.entries else {
            reject(.badRingIndex)
            ringCorrupt = true
            hostStore(area, .ringTail, head) // resynchronise (§2.4)
            return
        }
        var index = tail
        while index != head {
            let slot = Int(index & (ring.entries - 1))
            // Sound: slot < entries and the ring's `entries * 8` bytes were bounds-checked at REGISTER.
            let entry = ckvm_load_acquire_u64(ring.host + slot * 8)
            if entry >> 52 == 0, let page = memory.pageIndex(of: PageFrame(entry)) {
                pending.insert(page)
                recordDrained(vcpu: vcpu)
            } else {
                reject(.badRingEntry)
            }
            index &+= 1
        }
        if used > 0 { hostStore(area, .ringTail, head) }
    }
}
