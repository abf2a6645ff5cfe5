// See include/CKVM.h for the contract of every function here.
#define _GNU_SOURCE
#include "CKVM.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/membarrier.h>

long ckvm_ioctl(int fd, unsigned long request, void *arg, int retry_eintr) {
    for (;;) {
        long r = ioctl(fd, request, arg);
        if (r >= 0) return r;
        if (errno == EINTR && retry_eintr) continue;
        return -errno;
    }
}

long ckvm_ioctl_value(int fd, unsigned long request, unsigned long value) {
    for (;;) {
        long r = ioctl(fd, request, value);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        return -errno;
    }
}

int ckvm_kick_signal(void) { return SIGRTMIN + 1; }

static void ckvm_kick_handler(int sig) { (void)sig; }

int ckvm_install_kick_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ckvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
    if (sigaction(ckvm_kick_signal(), &sa, NULL) != 0) return -errno;
    return 0;
}

int ckvm_unblock_kick_signal(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, ckvm_kick_signal());
    int r = pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    return r == 0 ? 0 : -r;
}

int ckvm_kick_thread(unsigned long thread) {
    int r = pthread_kill((pthread_t)thread, ckvm_kick_signal());
    return r == 0 ? 0 : -r;
}

unsigned long ckvm_current_thread(void) { return (unsigned long)pthread_self(); }

uint32_t ckvm_load_acquire_u32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
uint64_t ckvm_load_acquire_u64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
void ckvm_store_release_u32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
void ckvm_store_release_u64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }
void ckvm_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

int ckvm_membarrier_register(void) {
    long supported = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (supported < 0) return -errno;
    if (!(supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return -ENOSYS;
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) < 0) return -errno;
    return 0;
}

int ckvm_membarrier(void) {
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) < 0) return -errno;
    return 0;
}

// struct sched_attr (include/uapi/linux/sched/types.h); glibc has no wrapper and the
// header is not in every libc's include path, so the layout is spelled out (version 1: 56
// bytes, what sched_setattr accepts since Linux 4.13).
struct ckvm_sched_attr {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
    uint32_t sched_util_min, sched_util_max;
};

static int ckvm_get_sched_attr(struct ckvm_sched_attr *attr) {
    memset(attr, 0, sizeof *attr);
    attr->size = sizeof *attr;
    if (syscall(SYS_sched_getattr, 0, attr, sizeof *attr, 0) < 0) return -errno;
    return 0;
}

int ckvm_set_thread_slice(unsigned long long nanoseconds) {
    struct ckvm_sched_attr attr;
    int r = ckvm_get_sched_attr(&attr);
    if (r < 0) return r;
    if (attr.sched_policy != 0 /* SCHED_OTHER */) return -EPERM; // not ours to change
    struct ckvm_sched_attr next;
    memset(&next, 0, sizeof next);
    next.size = sizeof next;
    next.sched_policy = 0;
    next.sched_nice = attr.sched_nice;
    next.sched_runtime = nanoseconds;
    if (syscall(SYS_sched_setattr, 0, &next, 0) < 0) return -errno;
    return 0;
}

long long ckvm_thread_slice(void) {
    struct ckvm_sched_attr attr;
    int r = ckvm_get_sched_attr(&attr);
    return r < 0 ? r : (long long)attr.sched_runtime;
}

const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
const unsigned long CKVM_CLEAR_DIRTY_LOG = KVM_CLEAR_DIRTY_LOG;
const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;
const unsigned long CKVM_RUN = KVM_RUN;
const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
const unsigned long CKVM_GET_XSAVE2 = KVM_GET_XSAVE2;
const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
const unsigned long CKVM_RESET_DIRTY_RINGS = KVM_RESET_DIRTY_RINGS;
const unsigned long CKVM_DIRTY_LOG_PAGE_OFFSET = KVM_DIRTY_LOG_PAGE_OFFSET;
