import Core
import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// A shared working set (`share=1`, protocol.md §1.7, §2.9): two vCPUs write every page at
    /// nearly the same time, each its own slot. A migration keeps every slot of every page, and
    /// the guest's self-check finds a single stale slot of a page both vCPUs wrote — so a clean
    /// self-check after a migration means something.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct SharedWorkingSetTests {
        typealias M = MigrationTests
        typealias V = MultiVCPUTests
        /// 16 MiB = 4096 pages, each written by both vCPUs (their slots: 256 words each).
        static let shared = V.dirty + " share=1"
        static let pages: UInt64 = 4096

        /// Every vCPU writes at least `count` more pages (from its own counters, §2.10).
        static func everyVCPUWrites(_ machine: Machine, _ count: UInt64) -> Bool {
            let before = machine.pv.guestCounters?.perVCPU.map(\.pagesWritten) ?? []
            return Wait.until {
                guard let now = machine.pv.guestCounters?.perVCPU.map(\.pagesWritten), now.count == before.count,
                      now.count == machine.vcpus.count else { return machine.exit != nil }
                return machine.exit != nil || now.indices.allSatisfy { now[$0] >= before[$0] + count }
            } && machine.exit == nil
        }

        static func slot(_ memory: GuestMemory, _ index: Int, _ k: Int) -> PageStamp.Verdict {
            guard let page = memory.page(atIndex: index) else { return .unstamped }
            return PageStamp.verify(UnsafeRawBufferPointer(page), pfn: UInt64(index), slot: k, writers: 2)
        }

        /// Pages whose two slots both hold an intact stamp (host-side formula, §2.9).
        static func pagesStampedByBoth(_ memory: GuestMemory) -> Int {
            (0..<memory.pageCount).count { index in
                (0..<2).allSatisfy { if case .good = slot(memory, index, $0) { true } else { false } }
            }
        }

        /// A page whose two slots were both rewritten between `old` and `new` (intact, with a
        /// newer version, in both copies).
        static func pageRewrittenByBoth(old: GuestMemory, new: GuestMemory) -> Int? {
            (0..<new.pageCount).first { index in
                (0..<2).allSatisfy { k in
                    guard case let .good(before) = slot(old, index, k), case let .good(after) = slot(new, index, k)
                    else { return false }
                    return after != before
                }
            }
        }

        @Test func sharedPagesMigrateWithEverySlotIntact() throws {
            let (machine, console) = try V.boot(Self.shared, vcpus: 2)
            #expect(machine.waitUntilRegistered())
            #expect(Self.everyVCPUWrites(machine, Self.pages), "a vCPU writes too little: \(console.text.suffix(300))")
            // PV alone to the end: the pages' last writes are known only from the two vCPUs' rings.
            let (vm, _, arrived) = try V.migrate(machine, .pv)
            defer { vm.machine.stop(); vm.machine.waitForExit() }
            // The set really is shared: most pages carry both vCPUs' stamps (the source's final
            // memory, which the digest says the destination holds).
            let both = Self.pagesStampedByBoth(machine.memory)
            #expect(both >= Int(Self.pages) / 2, "only \(both) pages carry both vCPUs' stamps")
            #expect(V.everyVCPUProgresses(vm.machine), "a vCPU is stuck after arrival: \(arrived.text.suffix(300))")
            let (checked, bad) = try M.selfcheck(vm.machine, arrived)
            #expect(checked >= UInt64(both) && bad == 0, "\(checked) pages checked, \(bad) bad")
        }

        /// The negative: a restored copy whose memory is exact but for one slot — vCPU 1's, of a
        /// page both vCPUs rewrote — taken from an earlier, intact version (a lost write) is
        /// caught by the self-check as exactly one bad page; the source itself checks clean.
        @Test func aStaleSlotOfASharedPageIsCaught() throws {
            let (source, console) = try V.boot(Self.shared, vcpus: 2)
            defer { source.stop(); source.waitForExit() }
            #expect(Self.everyVCPUWrites(source, Self.pages))
            let second = WaitableConsole()
            let target = try Machine(restoring: V.configuration("", vcpus: 2, console: second))
            source.pause()
            try target.memory.copyContents(from: source.memory)  // the earlier version
            source.resume()
            #expect(Self.everyVCPUWrites(source, Self.pages))
            source.pause()
            let state = try source.saveState()
            let index = try #require(Self.pageRewrittenByBoth(old: target.memory, new: source.memory),
                                     "no page was rewritten by both vCPUs")
            let words = PageStamp.slotWords(writers: 2)
            let stale = Array(UnsafeRawBufferPointer(rebasing: try #require(target.memory.page(atIndex: index))[(words * 8)..<(words * 16)]))
            try target.memory.copyContents(from: source.memory)
            let page = try #require(target.memory.page(atIndex: index))
            stale.withUnsafeBytes { page.baseAddress!.advanced(by: words * 8).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            try target.restore(state)
            target.start()
            defer { target.stop(); target.waitForExit() }
            let (pages, bad) = try M.selfcheck(target, second)
            #expect(pages > 0 && bad == 1, "\(pages) pages checked, \(bad) bad (expected exactly the stale page \(index))")
            // The control: the same guest, with its memory untouched, checks clean.
            source.resume()
            let (_, sourceBad) = try M.selfcheck(source, console)
            #expect(sourceBad == 0)
        }
    }
}
