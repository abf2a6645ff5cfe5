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

    /// The same harvest, logged pages and always-dirty ranges together, ORed into `pages` (of
    /// the guest's page count): its cost follows what the guest logged, not its size (no bitmap
    /// is allocated or walked whole). Nil when the guest has no control page (`pages`
    /// untouched); otherwise whether the ring was corrupt at some drain since the last harvest
    /// (then treat every page as dirty).
    public func harvest(vcpusPaused: Bool, into pages: inout PageBitmap) -> Bool? {
        lock.withLock {
            guard let corrupt = harvestLocked(vcpusPaused: vcpusPaused, into: &pages) else { return nil }
            insertAlwaysDirtyLocked(into: &pages)
            return corrupt
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
        for r in alwaysDirty {
            if let first = memory.pageIndex(of: r.start.frame) {
                b.insert(range: first, count: Int(r.size / GuestPhysicalAddress.pageSize))
            }
        }
        for r in rings {
            if let first = memory.pageIndex(of: r.range.start.frame) {
                b.insert(range: first, count: Int((r.range.size + 4095) / 4096))
            }
        }
        if let control, let i = memory.pageIndex(of: control.gpa.frame) { b.insert(i) }
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
