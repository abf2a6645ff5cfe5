// The few instructions Swift cannot express: out-of-line helpers in entry.S
// (each a leaf function with the SysV calling convention; port I/O, cpuid and
// wrmsr are exits anyway) and inline ones from bridge.h (rdtsc, pause, mfence,
// volatile accesses to memory the host shares).

@_extern(c, "pvguest_outb")
func pvguest_outb(_ port: UInt16, _ value: UInt8)

@_extern(c, "pvguest_outl")
func pvguest_outl(_ port: UInt16, _ value: UInt32)

@_extern(c, "pvguest_cpuid")
func pvguest_cpuid(_ leaf: UInt32, _ registers: UnsafeMutablePointer<UInt32>)

@_extern(c, "pvguest_wrmsr")
func pvguest_wrmsr(_ msr: UInt32, _ value: UInt64)

@_extern(c, "pvguest_exit")
func pvguest_exit(_ status: UInt32)  // never returns

@_extern(c, "pvguest_image_end")
func pvguest_image_end() -> UInt64

@_extern(c, "pvguest_vif_page")
func pvguest_vif_page() -> UInt64

@_extern(c, "pvguest_line_buffer")
func pvguest_line_buffer() -> UnsafeMutablePointer<UInt8>

/// Thin, typed wrappers over the helpers above.
enum CPU {
    /// The result of one `cpuid` (subleaf 0).
    struct CPUIDResult {
        var eax: UInt32 = 0
        var ebx: UInt32 = 0
        var ecx: UInt32 = 0
        var edx: UInt32 = 0
    }

    static func cpuid(_ leaf: UInt32) -> CPUIDResult {
        var result = CPUIDResult()
        // Sound: CPUIDResult is four contiguous UInt32 fields, exactly what the
        // helper stores through the pointer.
        withUnsafeMutablePointer(to: &result) { pointer in
            pointer.withMemoryRebound(to: UInt32.self, capacity: 4) { pvguest_cpuid(leaf, $0) }
        }
        return result
    }

    static func outb(_ port: UInt16, _ value: UInt8) { pvguest_outb(port, value) }
    static func outl(_ port: UInt16, _ value: UInt32) { pvguest_outl(port, value) }
    static func writeMSR(_ msr: UInt32, _ value: UInt64) { pvguest_wrmsr(msr, value) }
    @inline(__always) static func readTSC() -> UInt64 { pvg_rdtsc() }
    @inline(__always) static func pause() { pvg_pause() }
    /// A full memory barrier (`mfence`).
    @inline(__always) static func memoryFence() { pvg_mfence() }
    /// Keeps the compiler from moving memory accesses across this point.
    @inline(__always) static func compilerBarrier() { pvg_compiler_barrier() }

    /// GPA of the first byte after the loaded image (page-aligned `_end`).
    static var imageEnd: UInt64 { pvguest_image_end() }

    /// Highest GPA (exclusive) covered by entry.S's identity map.
    static let mappedLimit: UInt64 = 16 << 30
}

/// The exit device (protocol.md §1.4): port 0xf4, then `cli; hlt` forever.
enum Exit {
    static let port: UInt16 = 0xf4
    static let success: UInt32 = 0
    static let panic: UInt32 = 1

    static func now(_ status: UInt32) -> Never {
        while true { pvguest_exit(status) }  // the helper never returns
    }
}
