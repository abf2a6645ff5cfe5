import Core
import Foundation
import Testing

@testable import Migrate

@Suite("stream worker")
struct StreamWorkerTests {
    @Test("runs every job on the same thread, one after another, until stopped")
    func sameThreadAcrossJobs() {
        let worker = StreamWorker()
        let threads = Locked<[UInt]>([])
        for _ in 0..<5 {
            let done = DispatchSemaphore(value: 0)
            worker.run {
                threads.withLock { $0.append(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(Unmanaged.passUnretained(Thread.current).toOpaque())))) }
                done.signal()
            }
            // A bound only against a hang: a stopped or stuck worker fails here.
            #expect(done.wait(timeout: .now() + 30) == .success, "job not run; ran so far: \(threads.value.count)")
        }
        #expect(threads.value.count == 5 && Set(threads.value).count == 1, "threads: \(threads.value)")
        #expect(threads.value.first != UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(Unmanaged.passUnretained(Thread.current).toOpaque()))))
        worker.stop()
    }
}
