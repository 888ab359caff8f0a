/* Probe-cost microbenchmark: one tiny function per instruction kind, each starting with that
 * instruction. The bench attaches an empty uprobe at offset 0 of every function, calls each
 * CALLS times, and compares with the same calls unprobed: the difference is what a uprobe on
 * that instruction costs on this kernel (emulated vs single-stepped out of line).
 * usage: instructions CALLS    (prints "ready", waits for a line, prints "name ns_per_call") */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define KIND(name, body) \
    __asm__(".text\n.globl " #name "\n.type " #name ",@function\n" #name ":\n" body "\nret\n.size " #name ", .-" #name "\n"); \
    void name(void);

KIND(k_push_rbp, "push %rbp\npop %rbp")
KIND(k_push_r12, "push %r12\npop %r12")
KIND(k_nop1, ".byte 0x90")
KIND(k_nop2, ".byte 0x66,0x90")
KIND(k_nop3, ".byte 0x0f,0x1f,0x00")
KIND(k_nop4, ".byte 0x0f,0x1f,0x40,0x00")
KIND(k_nop5, ".byte 0x0f,0x1f,0x44,0x00,0x00")
KIND(k_nop6, ".byte 0x66,0x0f,0x1f,0x44,0x00,0x00")
KIND(k_nop4_nonstandard, ".byte 0x0f,0x1f,0x04,0x00")
KIND(k_jmp_rel8, ".byte 0xeb,0x00")
KIND(k_jmp_rel32, ".byte 0xe9,0x00,0x00,0x00,0x00")
KIND(k_call_rel32, "call 1f\n1: add $8,%rsp")
KIND(k_jcc_rel8, ".byte 0x74,0x00")
KIND(k_jcc_rel32, ".byte 0x0f,0x84,0x00,0x00,0x00,0x00")
KIND(k_mov_reg, "mov %rdi,%rax")
KIND(k_sub_rsp, "sub $8,%rsp\nadd $8,%rsp")
KIND(k_lea, "lea 8(%rdi),%rax")
KIND(k_test, "test %rdi,%rdi")
KIND(k_cmp_rip, "cmpb $0,k_data(%rip)")
KIND(k_xor, "xor %eax,%eax")
KIND(k_endbr64, ".byte 0xf3,0x0f,0x1e,0xfa")

char k_data;

struct kind { const char *name; void (*fn)(void); };
static const struct kind kinds[] = {
    {"push %rbp", k_push_rbp}, {"push %r12", k_push_r12}, {"nop (90)", k_nop1},
    {"nop (66 90)", k_nop2}, {"nop (0f 1f 00)", k_nop3}, {"nop (0f 1f 40 00)", k_nop4},
    {"nop (0f 1f 44 00 00)", k_nop5}, {"nop (66 0f 1f 44 00 00)", k_nop6},
    {"nop (0f 1f 04 00, non-standard)", k_nop4_nonstandard}, {"jmp rel8", k_jmp_rel8},
    {"jmp rel32", k_jmp_rel32}, {"call rel32", k_call_rel32}, {"jcc rel8", k_jcc_rel8},
    {"jcc rel32", k_jcc_rel32}, {"mov %rdi,%rax", k_mov_reg}, {"sub $8,%rsp", k_sub_rsp},
    {"lea 8(%rdi),%rax", k_lea}, {"test %rdi,%rdi", k_test}, {"cmpb $0,x(%rip)", k_cmp_rip},
    {"xor %eax,%eax", k_xor}, {"endbr64", k_endbr64},
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 200000;
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        uint64_t start = now_ns();
        for (long c = 0; c < calls; c++) kinds[i].fn();
        printf("%s\t%.1f\n", kinds[i].name, (double)(now_ns() - start) / calls);
    }
    fflush(stdout);
    return 0;
}
