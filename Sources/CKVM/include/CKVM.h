// CKVM: the C side of pvmigrate's KVM layer.
//
// Swift imports <linux/kvm.h>'s structs and plain integer macros directly, but not the
// _IO/_IOR/_IOW request macros, nor variadic ioctl(2), nor signal-handler installation.
// This header exposes exactly those, and nothing else. Every function returns a
// non-negative value on success or -errno on failure (never -1 with errno set).
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stdint.h>

#include "CKVMNet.h" // the PV NIC's TAP and bridge helpers

/// ioctl(fd, request, arg) retried on EINTR unless `retry_eintr` is 0. Returns the
/// ioctl's non-negative result, or -errno.
long ckvm_ioctl(int fd, unsigned long request, void *arg, int retry_eintr);

/// ioctl(fd, request, value) for requests that take an integer argument
/// (KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_CHECK_EXTENSION, KVM_SET_TSS_ADDR). Retries EINTR.
/// Returns the non-negative result or -errno.
long ckvm_ioctl_value(int fd, unsigned long request, unsigned long value);

/// The signal used to kick a vCPU thread out of KVM_RUN (a real-time signal).
int ckvm_kick_signal(void);

/// Installs a no-op handler for ckvm_kick_signal() without SA_RESTART, so that a
/// blocking KVM_RUN returns -EINTR when the signal arrives. Idempotent. Returns 0 or -errno.
int ckvm_install_kick_handler(void);

/// Unblocks ckvm_kick_signal() for the calling thread (threads inherit their creator's
/// mask, which may block it; a blocked kick would leave KVM_RUN running). Returns 0 or -errno.
int ckvm_unblock_kick_signal(void);

/// pthread_kill(thread, ckvm_kick_signal()) for a thread id obtained from
/// ckvm_current_thread(). Returns 0 or -errno.
int ckvm_kick_thread(unsigned long thread);

/// pthread_self() as an integer.
unsigned long ckvm_current_thread(void);

// Shared guest memory (PV control page, dirty ring) is read and written by the guest
// concurrently. These are single, untorn, ordered accesses (acquire loads, release
// stores; x86-64 TSO makes them plain moves plus a compiler barrier). `p` must be
// naturally aligned and inside mapped guest memory (callers bounds-check first).
uint32_t ckvm_load_acquire_u32(const void *p);
uint64_t ckvm_load_acquire_u64(const void *p);
void ckvm_store_release_u32(void *p, uint32_t v);
void ckvm_store_release_u64(void *p, uint64_t v);
/// A full fence (mfence): orders the host's stores before its later loads.
void ckvm_full_fence(void);

/// membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED), after checking with
/// MEMBARRIER_CMD_QUERY that the kernel has it. Returns 0 or -errno (-ENOSYS when absent).
int ckvm_membarrier_register(void);
/// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): before it returns, every thread of this
/// process that is running on a CPU (a vCPU thread inside KVM_RUN included) has executed a
/// full memory barrier. Needs ckvm_membarrier_register() first. Returns 0 or -errno.
int ckvm_membarrier(void);

/// The calling thread's time slice under the fair scheduler (EEVDF, Linux 6.12+:
/// sched_setattr with SCHED_OTHER and `sched_runtime`), in nanoseconds; 0 restores the
/// default. Keeps the thread's nice value. Returns 0 or -errno (-EINVAL where the kernel
/// has no custom slices).
int ckvm_set_thread_slice(unsigned long long nanoseconds);
/// The calling thread's time slice in nanoseconds (sched_getattr), or -errno.
long long ckvm_thread_slice(void);

// KVM ioctl request numbers. Capability needed, where one is, in brackets.
extern const unsigned long CKVM_GET_API_VERSION;
extern const unsigned long CKVM_CREATE_VM;
extern const unsigned long CKVM_CHECK_EXTENSION;
extern const unsigned long CKVM_GET_VCPU_MMAP_SIZE;
extern const unsigned long CKVM_GET_SUPPORTED_CPUID;   // [KVM_CAP_EXT_CPUID]
extern const unsigned long CKVM_GET_MSR_INDEX_LIST;
extern const unsigned long CKVM_SET_USER_MEMORY_REGION;
extern const unsigned long CKVM_CREATE_VCPU;
extern const unsigned long CKVM_GET_DIRTY_LOG;
extern const unsigned long CKVM_CLEAR_DIRTY_LOG;       // [KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2]
extern const unsigned long CKVM_ENABLE_CAP;
extern const unsigned long CKVM_SET_TSS_ADDR;          // [KVM_CAP_SET_TSS_ADDR]
extern const unsigned long CKVM_SET_IDENTITY_MAP_ADDR; // [KVM_CAP_SET_IDENTITY_MAP_ADDR]
extern const unsigned long CKVM_CREATE_IRQCHIP;        // [KVM_CAP_IRQCHIP]
extern const unsigned long CKVM_GET_IRQCHIP;
extern const unsigned long CKVM_SET_IRQCHIP;
extern const unsigned long CKVM_GET_CLOCK;             // [KVM_CAP_ADJUST_CLOCK]
extern const unsigned long CKVM_SET_CLOCK;
extern const unsigned long CKVM_RUN;
extern const unsigned long CKVM_GET_REGS;
extern const unsigned long CKVM_SET_REGS;
extern const unsigned long CKVM_GET_SREGS;
extern const unsigned long CKVM_SET_SREGS;
extern const unsigned long CKVM_GET_FPU;
extern const unsigned long CKVM_SET_FPU;
extern const unsigned long CKVM_GET_XSAVE;             // [KVM_CAP_XSAVE]
extern const unsigned long CKVM_GET_XSAVE2;            // [KVM_CAP_XSAVE2]
extern const unsigned long CKVM_SET_XSAVE;
extern const unsigned long CKVM_GET_XCRS;              // [KVM_CAP_XCRS]
extern const unsigned long CKVM_SET_XCRS;
extern const unsigned long CKVM_GET_MSRS;
extern const unsigned long CKVM_SET_MSRS;
extern const unsigned long CKVM_GET_VCPU_EVENTS;       // [KVM_CAP_VCPU_EVENTS]
extern const unsigned long CKVM_SET_VCPU_EVENTS;
extern const unsigned long CKVM_GET_MP_STATE;          // [KVM_CAP_MP_STATE]
extern const unsigned long CKVM_SET_MP_STATE;
extern const unsigned long CKVM_GET_DEBUGREGS;         // [KVM_CAP_DEBUGREGS]
extern const unsigned long CKVM_SET_DEBUGREGS;
extern const unsigned long CKVM_GET_LAPIC;             // [KVM_CAP_IRQCHIP]
extern const unsigned long CKVM_SET_LAPIC;
extern const unsigned long CKVM_SET_CPUID2;
extern const unsigned long CKVM_GET_TSC_KHZ;           // [KVM_CAP_GET_TSC_KHZ]
extern const unsigned long CKVM_RESET_DIRTY_RINGS;     // [KVM_CAP_DIRTY_LOG_RING]
extern const unsigned long CKVM_DIRTY_LOG_PAGE_OFFSET; // page offset of the vCPU dirty ring mmap

#endif
