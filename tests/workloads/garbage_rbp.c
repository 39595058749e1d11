/*
 * garbage_rbp.c - allocations under a frame whose rbp is not a frame
 * pointer, in a build WITHOUT frame pointers, for the garbage-frame tests
 * (tests/unwind.rs).
 *
 * Build (done by tests/support/plausible.rs):
 *   cc -O2 -g -fomit-frame-pointer -pthread
 *
 * Protocol: stdout "ready <pid>", then on stdin "go" perform every
 * allocation, print "done", and stay until stdin closes.
 *
 * with_rbp (hand-written, without CFI, as code without frame pointers or
 * a table looks to an unwinder) calls a leaf function with rbp set to a
 * value of its caller's choosing, as optimised code leaves rbp holding
 * data:
 * - leak_below: rbp is a heap address (below the stack), 5 x 1,100 B;
 * - leak_above: rbp is the address of a fake frame in run_all's stack,
 *   whose "return address" is GARBAGE_RETURN, in no mapping, 7 x 1,200 B.
 * Both fake frames chain to a "saved rbp" above them that ends the chain.
 * An unwinder that follows rbp there shows GARBAGE_RETURN as a frame.
 *
 * KEEP IN SYNC with GARBAGE_SITES in tests/unwind.rs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CALL __attribute__((noinline, noclone))
#define GARBAGE_RETURN 0x1234567L

/* long with_rbp(long (*fn)(long), long arg, long rbp): fn(arg) with rbp
 * set to `rbp` meanwhile. */
__asm__(".text\n"
        ".globl with_rbp\n"
        ".type with_rbp, @function\n"
        "with_rbp:\n"
        "    push %rbp\n"
        "    mov %rdx, %rbp\n"
        "    mov %rdi, %rax\n"
        "    mov %rsi, %rdi\n"
        "    call *%rax\n"
        "    pop %rbp\n"
        "    ret\n"
        ".size with_rbp, .-with_rbp\n");
long with_rbp(long (*fn)(long), long arg, long rbp);

#define SINK_SLOTS 64
void *volatile sink[SINK_SLOTS];
static int sink_next;
volatile int one = 1;

static void *keep(void *p)
{
    if (p == NULL || sink_next >= SINK_SLOTS)
        exit(2);
    sink[sink_next++] = p;
    return p;
}

CALL long leak_below(long n)
{
    return (long)keep(malloc(1100 * one)) + n;
}

CALL long leak_above(long n)
{
    return (long)keep(malloc(1200 * one)) + n;
}

CALL static long run_all(void)
{
    long acc = 0;
    /* A fake frame: saved rbp (the next fake frame), return address. */
    long *heap_frame = calloc(4, sizeof(long));
    volatile long stack_frame[4] = {0, GARBAGE_RETURN, 0, 0};
    if (heap_frame == NULL)
        exit(2);
    heap_frame[0] = (long)&heap_frame[2];
    heap_frame[1] = GARBAGE_RETURN;
    stack_frame[0] = (long)&stack_frame[2];
    for (int i = 0; i < 5; i++)
        acc += with_rbp(leak_below, i, (long)heap_frame);
    for (int i = 0; i < 7; i++)
        acc += with_rbp(leak_above, i, (long)&stack_frame[0]);
    free(heap_frame);
    return acc + stack_frame[3];
}

int main(void)
{
    char line[64];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL || strncmp(line, "go", 2) != 0)
        return 1;
    long acc = run_all();
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL)
        ;
    return acc == 42;
}
