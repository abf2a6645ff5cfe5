/// The PV interface's part of a saved machine (protocol.md §1.8, section `pv`): where the
/// guest's control page is, which ABI it announced, and the balloon map. Restoring
/// re-validates the control page found in the (copied) guest memory like a fresh REGISTER:
/// saved state is untrusted input too.
extension PVInterface {
    public struct State: StateSection {
        public static let tag: UInt16 = 4
        public static let name = "pv"
        public var guestVersion: UInt32      // 0: never said HELLO
        public var controlPage: UInt64       // GPA, 0: not registered
        public var balloonWords: [UInt64]

        static let headerSize = 16

        /// False for a guest that never touched the PV interface (no HELLO, no control page,
        /// nothing ballooned): its state is the default and need not travel.
        public var isInUse: Bool {
            guestVersion != 0 || controlPage != 0 || balloonWords.contains { $0 != 0 }
        }

        public func encoded() -> [UInt8] {
            var w = ByteWriter(capacity: Self.headerSize + 8 * balloonWords.count)
            w.u32(guestVersion)
            w.u32(0)
            w.u64(controlPage)
            w.u64s(balloonWords)
            return w.bytes
        }

        public init(guestVersion: UInt32, controlPage: UInt64, balloonWords: [UInt64]) {
            self.guestVersion = guestVersion; self.controlPage = controlPage; self.balloonWords = balloonWords
        }

        public init(encoded b: [UInt8]) throws(StateCodingError) {
            var r = ByteReader(b)
            guard (b.count - Self.headerSize) % 8 == 0, let version = r.u32(), let reserved = r.u32(),
                  let page = r.u64() else {
                throw .badSectionSize(name: Self.name, expected: Self.headerSize, got: b.count)
            }
            guard reserved == 0 else { throw .reservedNotZero("section pv") }
            guestVersion = version
            controlPage = page
            balloonWords = r.u64s(r.remaining / 8) ?? []
        }
    }

    public enum RestoreError: Error, CustomStringConvertible {
        case balloonSize(expected: Int, got: Int)
        case controlPageInvalid(UInt64)
        public var description: String {
            switch self {
            case let .balloonSize(e, g): return "PV state: balloon map of \(g) words, this VM needs \(e)"
            case let .controlPageInvalid(gpa): return "PV state: the control page at 0x\(String(gpa, radix: 16)) is not valid in the received memory"
            }
        }
    }

    public func savedState() -> State {
        lock.withLock {
            State(guestVersion: snapshotLocked.guestVersion ?? 0, controlPage: control?.gpa.raw ?? 0,
                  balloonWords: balloonLocked.words)
        }
    }

    func restore(_ state: State) throws(RestoreError) {
        let expected = (memory.pageCount + 63) / 64
        guard state.balloonWords.count == expected else { throw .balloonSize(expected: expected, got: state.balloonWords.count) }
        lock.lock()
        defer { lock.unlock() }
        setBalloonLocked(words: state.balloonWords)
        setGuestVersionLocked(state.guestVersion == 0 ? nil : state.guestVersion)
        guard state.controlPage != 0 else { return }
        let before = snapshotLocked.totalRejected
        adoptControlPageLocked(gpa: state.controlPage)
        guard snapshotLocked.totalRejected == before, control != nil else { throw .controlPageInvalid(state.controlPage) }
    }
}

extension PVInterface: StateSaving {
    public func saveState() -> State { savedState() }

    public func restoreState(_ state: State) throws(MachineError) {
        do { try restore(state) } catch { throw .restoreMismatch(error.description) }
    }
}
