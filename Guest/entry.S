/*
 * pvguest entry stub (protocol.md §1.1, §1.6).
 *
 * The VMM (or QEMU) enters at pvh_start in 32-bit flat protected mode with
 * paging off and EBX = GPA of hvm_start_info. This stub loads its own GDT,
 * switches to long mode on identity-mapped page tables that are pre-built in
 * .data (every instruction before native mode is emulated at ~1 µs, so no
 * loops here), installs a minimal IDT, and calls the Swift
 * kmain(startInfo: UInt64).
 *
 * Also here: the tiny instruction helpers the Swift code calls through
 * @_extern(c) (port I/O, cpuid, wrmsr, halt), and the static buffers
 * the Swift code must not allocate (line buffer, stack, VIF page).
 */

#define SEL_CODE64   0x08
#define SEL_CODE32   0x10
#define SEL_DATA     0x18

#define PTE_PRESENT  0x001
#define PTE_WRITE    0x002
#define PTE_USER     0x004      /* PVM: U/S must be set at every level */
#define PTE_LARGE    0x080
#define PTE_TABLE    (PTE_PRESENT | PTE_WRITE | PTE_USER)

#define MAPPED_GIB   16         /* identity map 0 .. 16 GiB with 2 MiB pages */

#define CR0_PG       0x80000000
#define CR4_PAE      0x20
#define MSR_EFER     0xc0000080
#define EFER_LME     0x100

#define STACK_SIZE   16384
#define AP_MARKER    0xffffffff /* EBX of an AP at pvh_start (no hvm_start_info) */

/* ---------------------------------------------------------------- PVH note */

        .section .note.Xen, "a", @note
        .balign 4
        .long 4                 /* namesz: "Xen\0" */
        .long 4                 /* descsz */
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long pvh_start
        .balign 4

/* ------------------------------------------------------- 32-bit entry path */

        .section .text.entry, "ax"
        .code32
        .globl pvh_start
pvh_start:
        cli
        cld
        movl    %ebx, %esi              /* keep the hvm_start_info GPA */
        lgdt    gdt_descriptor
        movl    $SEL_DATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    %eax, %fs
        movl    %eax, %gs

        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    %cr4, %eax
        orl     $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $EFER_LME, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $CR0_PG, %eax
        movl    %eax, %cr0
        ljmp    $SEL_CODE64, $long_mode_entry

/* ------------------------------------------------------- 64-bit entry path */

        .code64
long_mode_entry:
        xorl    %eax, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %fs
        movl    %eax, %gs
        movl    $SEL_DATA, %eax
        movl    %eax, %ss
        cmpl    $AP_MARKER, %esi                /* an AP started by INIT/SIPI? */
        je      ap_sipi_long_mode
        leaq    stack_top(%rip), %rsp
        xorl    %ebp, %ebp

        /* Fill the 32 IDT gates from the fixed-size stubs (32 iterations). */
        leaq    idt(%rip), %rdi
        leaq    exception_stubs(%rip), %rdx
        movl    $32, %ecx
1:      movq    %rdx, %rax
        movw    %ax, (%rdi)                     /* offset 15:0 */
        movw    $SEL_CODE64, 2(%rdi)
        movw    $0x8e00, 4(%rdi)                /* present, DPL 0, interrupt gate */
        shrq    $16, %rax
        movw    %ax, 6(%rdi)                    /* offset 31:16 */
        shrq    $16, %rax
        movl    %eax, 8(%rdi)                   /* offset 63:32 */
        movl    $0, 12(%rdi)
        addq    $16, %rdi
        addq    $16, %rdx
        decl    %ecx
        jnz     1b
        lidt    idt_descriptor(%rip)

        movl    %esi, %edi                      /* kmain(startInfo:) */
        call    pvguest_kmain
        movl    $1, %edi
        jmp     pvguest_exit

/* An AP started by INIT/SIPI (protocol.md §2.10, the standard path): the
 * trampoline below brought it to pvh_start with EBX = AP_MARKER, and the same
 * path as vCPU 0's took it to long mode. vCPU 0 wrote the start block (the
 * VCPU_START block's layout) and published its GPA in ap_start_block. */
ap_sipi_long_mode:
        lidt    idt_descriptor(%rip)
        movq    ap_start_block(%rip), %rax
        movq    16(%rax), %rsp
        movq    24(%rax), %rdi
        xorl    %ebp, %ebp
        jmpq    *8(%rax)

/* ------------------------------------------------------ exception handling */

        /* One 16-byte stub per vector; each leaves [vector, error code] on
         * top of the CPU's frame (rip at 16(%rsp)). */
        .balign 16
exception_stubs:
        .set vector, 0
        .rept 32
        .balign 16
        .if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
        .else
        pushq   $0
        .endif
        pushq   $vector
        jmp     exception_common
        .set vector, vector + 1
        .endr

exception_common:
        movq    (%rsp), %rdi                    /* vector */
        movq    8(%rsp), %rsi                   /* error code */
        movq    16(%rsp), %rdx                  /* rip */
        movq    %cr2, %rcx
        andq    $-16, %rsp
        call    pvguest_exception               /* never returns */
        movl    $1, %edi
        jmp     pvguest_exit

/* ------------------------------------------------ helpers called from Swift */

        .section .text.helpers, "ax"

        .globl pvguest_outb
pvguest_outb:                                   /* (port: u16, value: u8) */
        movl    %edi, %edx
        movl    %esi, %eax
        outb    %al, %dx
        ret

        .globl pvguest_outl
pvguest_outl:                                   /* (port: u16, value: u32) */
        movl    %edi, %edx
        movl    %esi, %eax
        outl    %eax, %dx
        ret

        .globl pvguest_cpuid
pvguest_cpuid:                                  /* (leaf: u32, out: *u32[4]) */
        pushq   %rbx
        movq    %rsi, %r8
        movl    %edi, %eax
        xorl    %ecx, %ecx
        cpuid
        movl    %eax, (%r8)
        movl    %ebx, 4(%r8)
        movl    %ecx, 8(%r8)
        movl    %edx, 12(%r8)
        popq    %rbx
        ret

        .globl pvguest_wrmsr
pvguest_wrmsr:                                  /* (msr: u32, value: u64) */
        movl    %edi, %ecx
        movl    %esi, %eax
        movq    %rsi, %rdx
        shrq    $32, %rdx
        wrmsr
        ret

        .globl pvguest_exit
pvguest_exit:                                   /* (status: u32) -> never */
        movl    %edi, %eax
        movl    $0xf4, %edx
        outl    %eax, %dx
2:      cli
        hlt
        jmp     2b

/* The compiler turns zeroing and copying loops into calls to these (there is
 * no C library). String instructions run natively and fast on PVM. */
        .globl memset
memset:                                         /* (dst, byte, n) -> dst */
        movq    %rdi, %r9
        movl    %esi, %eax
        movq    %rdx, %rcx
        rep stosb
        movq    %r9, %rax
        ret

        .globl memcpy
memcpy:                                         /* (dst, src, n) -> dst */
        movq    %rdi, %rax
        movq    %rdx, %rcx
        rep movsb
        ret

        .globl memmove
memmove:                                        /* (dst, src, n) -> dst */
        movq    %rdi, %rax
        movq    %rdx, %rcx
        cmpq    %rsi, %rdi
        jbe     3f                              /* dst <= src: copy forwards */
        leaq    (%rsi,%rdx), %r8
        cmpq    %r8, %rdi
        jae     3f                              /* no overlap: forwards */
        leaq    -1(%rdi,%rdx), %rdi             /* overlap, dst above: backwards */
        leaq    -1(%rsi,%rdx), %rsi
        std
        rep movsb
        cld
        ret
3:      rep movsb
        ret

        .globl pvguest_image_end
pvguest_image_end:                              /* () -> GPA just past the image */
        leaq    _end(%rip), %rax
        ret

        .globl pvguest_vif_page
pvguest_vif_page:                               /* () -> GPA of vCPU 0's VIF page */
        leaq    vif_page(%rip), %rax
        ret

        .globl pvguest_ap_entry_address
pvguest_ap_entry_address:                       /* () -> where VCPU_START enters an AP */
        leaq    pvguest_ap_entry(%rip), %rax
        ret

        .globl pvguest_rdmsr
pvguest_rdmsr:                                  /* (msr: u32) -> u64 */
        movl    %edi, %ecx
        rdmsr
        shlq    $32, %rdx
        movl    %eax, %eax
        orq     %rdx, %rax
        ret

        .globl pvguest_set_ap_start_block
pvguest_set_ap_start_block:                     /* (gpa: u64): where SIPI'd APs find their block */
        movq    %rdi, ap_start_block(%rip)
        ret

        .globl pvguest_trampoline
pvguest_trampoline:                             /* () -> GPA of the real-mode trampoline */
        leaq    trampoline_start(%rip), %rax
        ret

        .globl pvguest_trampoline_size
pvguest_trampoline_size:                        /* () -> its size in bytes */
        movl    $(trampoline_end - trampoline_start), %eax
        ret

        .globl pvguest_halt
pvguest_halt:                                   /* () -> never: cli; hlt */
4:      cli
        hlt
        jmp     4b

/* An AP (protocol.md §2.10): the host copies vCPU 0's mode, paging, segments
 * and descriptor tables, and sets RIP here, RSP to its stack and RDI to the
 * argument vCPU 0 chose. */
        .globl pvguest_ap_entry
pvguest_ap_entry:
        xorl    %ebp, %ebp
        call    pvguest_ap_main
        movl    $1, %edi
        jmp     pvguest_exit

        .globl pvguest_line_buffer
pvguest_line_buffer:                            /* () -> 256-byte console buffer */
        leaq    line_buffer(%rip), %rax
        ret

/* The real-mode trampoline of an AP started by INIT/SIPI. vCPU 0 copies it to
 * a page below 1 MiB (SMP.swift) and sends SIPI with that page's number: the AP
 * starts here in real mode with CS = page << 8, IP = 0. It loads the image's GDT
 * (the descriptor below, addressed CS-relative), enters protected mode and jumps
 * to pvh_start with EBX = AP_MARKER. Position-independent but for the absolute
 * addresses of the GDT and pvh_start, which lie in the image (below 4 GiB). */
        .section .rodata.trampoline, "a"
        .code16
trampoline_start:
        cli
        cld
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   trampoline_gdt - trampoline_start
        movl    %cr0, %eax
        andl    $0x9fffffff, %eax               /* caches on (INIT sets CD, NW) */
        orl     $1, %eax                        /* PE */
        movl    %eax, %cr0
        movw    $SEL_DATA, %ax                  /* flat data: pvh_start's lgdt reads DS */
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $AP_MARKER, %ebx
        ljmpl   $SEL_CODE32, $pvh_start
        .balign 8
trampoline_gdt:
        .word   gdt_end - gdt - 1
        .long   gdt
trampoline_end:
        .code64

/* -------------------------------------------------------- descriptor tables */

        .section .data.descriptors, "aw"
        .balign 16
gdt:
        .quad 0                                 /* null */
        .quad 0x00af9a000000ffff                /* 0x08: 64-bit code */
        .quad 0x00cf9a000000ffff                /* 0x10: 32-bit code */
        .quad 0x00cf92000000ffff                /* 0x18: flat data */
gdt_end:

        .balign 8
        .word 0
gdt_descriptor:
        .word gdt_end - gdt - 1
        .quad gdt

        .balign 8
        .word 0
idt_descriptor:
        .word 32 * 16 - 1
        .quad idt

/* -------------------------------------- identity-mapped page tables (§1.6) */

        .section .data.pagetables, "aw"
        .balign 4096
pml4:
        .quad pdpt + PTE_TABLE
        .fill 511, 8, 0
pdpt:
        .set gib, 0
        .rept MAPPED_GIB
        .quad page_directories + gib * 4096 + PTE_TABLE
        .set gib, gib + 1
        .endr
        .fill 512 - MAPPED_GIB, 8, 0
page_directories:
        .set large_page, 0
        .rept MAPPED_GIB * 512
        .quad (large_page << 21) + PTE_TABLE + PTE_LARGE
        .set large_page, large_page + 1
        .endr

        .section .data.smp, "aw"
        .balign 8
ap_start_block:                 /* GPA of the start block an AP reads after SIPI */
        .quad 0

/* ------------------------------------------------------------------ .bss */

        .section .bss.pvguest, "aw", @nobits
        .balign 4096
vif_page:                       /* zeroed by the loader; used only as VIF */
        .skip 4096              /* (the other vCPUs' pages: Layout.swift) */
stack_bottom:
        .skip STACK_SIZE
stack_top:
        .balign 16
idt:
        .skip 32 * 16
line_buffer:
        .skip 256
