import Testing

@testable import Migrate

@Suite("OpenSSL library")
struct TLSLibraryTests {
    @Test("the linked OpenSSL is 3.x and matches the headers' major version")
    func version() {
        #expect(TLSLibrary.version.hasPrefix("OpenSSL 3."), "got \(TLSLibrary.version)")
        #expect(TLSLibrary.headerVersion.hasPrefix("OpenSSL 3."), "got \(TLSLibrary.headerVersion)")
        #expect(TLSLibrary.versionNumber >> 28 == 3)
    }
}
