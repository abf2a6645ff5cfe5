import Testing

/// Every end-to-end suite is nested here, and they run one at a time.
///
/// Deliberate (issue 8): each of these suites boots real guests that spin on a core (a
/// dirtying guest busy-waits between writes, whatever its rate), and several start extra
/// processes (`listen`, `run --detach`). On the 2-core machines CI uses, two such suites at once
/// leave the VMM threads, TLS and the test itself fighting for one core, and any test that
/// needs the guest to make progress only gets slower and slower. Run serially, one suite owns
/// at most one core with a guest and leaves the other to the host side; the unit-test targets
/// (CoreTests, MigrateTests) still run in parallel beside them. Tests never assume speed
/// either way: they wait on what the guest or host reports (TestSupport's `Wait`).
@Suite(.serialized) enum EndToEnd {}
