import Testing
import Control

/// The names `Arrivals` gives arriving VMs: the source's name, else NAME-2 … NAME-99.
@Suite struct ArrivalsNamingTests {
    @Test func aFreeNameIsKept() {
        #expect(Arrivals.candidateNames(for: "web", taken: []).first == "web")
        #expect(Arrivals.candidateNames(for: "web", taken: ["db", "web-2"]).first == "web")
    }

    @Test func aTakenNameGetsTheFirstFreeSuffix() {
        #expect(Arrivals.candidateNames(for: "web", taken: ["web"]).first == "web-2")
        #expect(Arrivals.candidateNames(for: "web", taken: ["web", "web-2", "web-3"]).prefix(2) == ["web-4", "web-5"])
        #expect(Arrivals.candidateNames(for: "web", taken: ["web", "web-3"]).prefix(2) == ["web-2", "web-4"])
    }

    @Test func theCandidatesEndAtNinetyNine() {
        let all = Arrivals.candidateNames(for: "web", taken: [])
        #expect(all.count == 99 && all.last == "web-99")
        let taken = Set(all)
        #expect(Arrivals.candidateNames(for: "web", taken: taken).isEmpty)
    }

    @Test func aNameThatCannotNameAVMHereBecomesVM() {
        for bad in ["", "../etc", "a/b", ".hidden", String(repeating: "x", count: 300)] {
            #expect(Arrivals.candidateNames(for: bad, taken: []).first == "vm", "\(bad)")
        }
        #expect(Arrivals.candidateNames(for: "", taken: ["vm"]).first == "vm-2")
    }
}
