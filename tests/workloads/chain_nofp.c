/*
 * chain_nofp.c - a shared library built WITHOUT frame pointers, loaded by
 * dlopen_nofp.c only after alloctrace attached (tests/unwind_kernel.rs).
 *
 * Build (done by tests/support/unwinding.rs):
 *   cc -O2 -g -fomit-frame-pointer -shared -fPIC
 *
 * chain_1 -> chain_2 -> chain_3 -> chain_4 -> chain_5 -> malloc(700): each
 * function noinline and noclone (gcc keeps its name) and using its
 * callee's result afterwards (no tail calls), so the chain is exactly this.
 *
 * KEEP IN SYNC with LIBRARY_CHAIN in tests/unwind_kernel.rs.
 */
#include <stdlib.h>

#define CALL __attribute__((noinline, noclone))

void *volatile chain_sink[64];
static int chain_next;
volatile int chain_one = 1;

CALL long chain_5(int n)
{
    void *p = malloc(700 * chain_one);
    if (p == NULL || chain_next >= 64)
        abort();
    chain_sink[chain_next++] = p;
    return (long)p + n;
}
CALL long chain_4(int n)
{
    return chain_5(n + 1) * 3;
}
CALL long chain_3(int n)
{
    return chain_4(n + 1) ^ 5;
}
CALL long chain_2(int n)
{
    return chain_3(n + 1) - 7;
}
CALL long chain_1(int n)
{
    return chain_2(n + 1) * 11;
}
