#ifndef PVMIGRATE_CFUZZER_H
#define PVMIGRATE_CFUZZER_H
#include <stddef.h>
#include <stdint.h>
// The kernel structs saved state is made of (protocol.md §1.8): the state seeds use their sizes.
#include <linux/kvm.h>

/// libFuzzer's driver (compiler-rt, linked by `-sanitize=fuzzer`): parses libFuzzer's flags
/// from argc/argv and runs `callback` on every input. Returns the process exit status.
/// SwiftPM renames an executable's entry point and defines `main` to it, so the harness
/// calls this instead of linking libFuzzer's own `main`.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
