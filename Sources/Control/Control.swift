/// Control: named VMs on a host (protocol.md §4). A process that runs VMs — `pvmigrate run`
/// or the `pvmigrate listen` daemon — hosts each one in a `VMHost`, which serves its control
/// socket; the CLI's other commands are clients of those sockets (`ControlClient`).
///
/// Files: RuntimeDirectory (where sockets live), VMHost (+Commands: the server side),
/// ControlClient, ConsoleRing (a VM's console buffer), JSONValue, Endpoint, KernelDigest,
/// ControlSocket (the only libc socket calls).
public enum ControlProtocol {
    public static let version = 1
    /// The longest line either side accepts, in bytes.
    public static let lineLimit = 1 << 20
}
