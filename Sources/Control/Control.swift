/// Control: named VMs on a host (protocol.md §4). A process that runs VMs — `pvmigrate run`
/// or the `pvmigrate listen` daemon — hosts each one in a `VMHost`, which serves its control
/// socket; the CLI's other commands are clients of those sockets.
public enum ControlProtocol {
    public static let version = 1
}
