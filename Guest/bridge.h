/*
 * pvguest: inline helpers imported into Swift (build.sh passes this file as
 * the bridging header). Only what must be inline to be cheap: accesses to
 * memory the host shares (volatile, with compiler barriers so the compiler
 * never moves the guest's page stores across them), mfence, pause and rdtsc.
 * Port I/O, cpuid and wrmsr stay out-of-line in entry.S (each is an exit).
 *
 * No <stdint.h> here: the freestanding target has no C library headers.
 */
#ifndef PVGUEST_BRIDGE_H
#define PVGUEST_BRIDGE_H

#define PVG_BARRIER() __asm__ volatile("" ::: "memory")

static inline unsigned int pvg_load32(const void *address) {
    PVG_BARRIER();
    unsigned int value = *(const volatile unsigned int *)address;
    PVG_BARRIER();
    return value;
}

static inline unsigned long long pvg_load64(const void *address) {
    PVG_BARRIER();
    unsigned long long value = *(const volatile unsigned long long *)address;
    PVG_BARRIER();
    return value;
}

static inline void pvg_store32(void *address, unsigned int value) {
    PVG_BARRIER();
    *(volatile unsigned int *)address = value;
    PVG_BARRIER();
}

static inline void pvg_store64(void *address, unsigned long long value) {
    PVG_BARRIER();
    *(volatile unsigned long long *)address = value;
    PVG_BARRIER();
}

/* A compiler-only barrier (x86 keeps stores in program order by itself). */
static inline void pvg_compiler_barrier(void) { PVG_BARRIER(); }

/* Full memory barrier (protocol.md §2.3 step 3). */
static inline void pvg_mfence(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline void pvg_pause(void) { __asm__ volatile("pause"); }

static inline unsigned long long pvg_rdtsc(void) {
    unsigned int low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return ((unsigned long long)high << 32) | low;
}

#endif
