import Core
import Net
import Testing

/// `--net` parsing (protocol.md §5): what it accepts and the one-line errors it gives.
@Suite struct NetSpecTests {
    @Test func acceptsBridgeAndTapWithOrWithoutMAC() throws {
        #expect(try NetSpec(parsing: "bridge=br0") == NetSpec(attachment: .bridge("br0")))
        #expect(try NetSpec(parsing: "tap=pvmt0,mac=52:54:00:00:00:01")
            == NetSpec(attachment: .tap("pvmt0"), mac: MACAddress("52:54:00:00:00:01")))
        #expect(try NetSpec(parsing: "mac=52:54:00:00:00:01,bridge=br0").mac != nil)
        #expect(try NetSpec(parsing: "bridge=br0").pollMicroseconds == NetSpec.defaultPollMicroseconds)
        #expect(try NetSpec(parsing: "bridge=br0,poll-us=700") == NetSpec(attachment: .bridge("br0"), pollMicroseconds: 700))
        #expect(try NetSpec(parsing: "poll-us=0,tap=pvmt0").pollMicroseconds == 0)
    }

    @Test(arguments: ["", "bridge", "bridge=", "bridge=br0,tap=t0", "mac=52:54:00:00:00:01",
                      "bridge=br0,mac=ff:ff:ff:ff:ff:ff", "bridge=a/b", "bridge=0123456789abcdef", "br=x",
                      "bridge=br0,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02", "bridge=br0,poll-us=-1",
                      "bridge=br0,poll-us=100001", "bridge=br0,poll-us=fast", "bridge=br0,poll-us=1,poll-us=2"])
    func rejects(_ text: String) {
        #expect(throws: NetSpecError.self) { try NetSpec(parsing: text) }
    }

    @Test func errorsSayWhatToDo() {
        #expect(NetError.noTunDevice.description.contains("modprobe tun"))
        #expect(NetError.notPermitted("create a TAP device").description.contains("root"))
        #expect(NetError.noSuchBridge("br9").description.contains("ip link add br9 type bridge"))
        #expect(!NetError.noSuchBridge("br9").description.contains("\n"))
    }

    @Test func missingBridgeIsNamedBeforeAnythingElse() throws {
        // Needs no privilege, creates nothing: the bridge is checked before a TAP is made.
        let spec = try NetSpec(parsing: "bridge=pvmt-none")
        #expect(throws: NetError.noSuchBridge("pvmt-none")) { _ = try spec.openTap() }
    }
}
