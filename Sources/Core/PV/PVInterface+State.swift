/// The PV interface's part of a saved machine (protocol.md §1.8, section `pv`): where the
/// guest's control page is, which ABI it announced, and the balloon map. Restoring
/// re-validates the control page found in the (copied) guest memory like a fresh REGISTER:
/// saved state is untrusted input too.
extension PVInterface {
    public struct State: Equatable, Sendable {
        public var guestVersion: UInt32      // 0: never said HELLO
        public var controlPage: UInt64       // GPA, 0: not registered
        public var balloonWords: [UInt64]

        static let headerSize = 16

        /// False for a guest that never touched the PV interface (no HELLO, no control page,
        /// nothing ballooned): its state is the default and need not travel.
        public var isInUse: Bool {
            guestVersion != 0 || controlPage != 0 || balloonWords.contains { $0 != 0 }
        }

        func encoded() -> [UInt8] {
            var b: [UInt8] = []
            StateWriter.put(&b, UInt64(guestVersion), 4)
            StateWriter.put(&b, 0, 4)
            StateWriter.put(&b, controlPage, 8)
            for w in balloonWords { StateWriter.put(&b, w, 8) }
            return b
        }

        init(guestVersion: UInt32, controlPage: UInt64, balloonWords: [UInt64]) {
            self.guestVersion = guestVersion; self.controlPage = controlPage; self.balloonWords = balloonWords
        }

        init(encoded b: [UInt8]) throws(StateCodingError) {
            guard b.count >= Self.headerSize, (b.count - Self.headerSize) % 8 == 0 else {
                throw .badSectionSize(name: "pv", expected: Self.headerSize, got: b.count)
            }
            guard StateReader.le(b, 4, 4) == 0 else { throw .reservedNotZero("section pv") }
            guestVersion = UInt32(StateReader.le(b, 0, 4))
            controlPage = StateReader.le(b, 8, 8)
            balloonWords = stride(from: Self.headerSize, to: b.count, by: 8).map { StateReader.le(b, $0, 8) }
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
