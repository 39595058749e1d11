/*
 * hold: the memory workload of `cargo xtask bench`.
 *
 * Usage: hold COUNT
 *
 * Prints `ready <pid>`, waits for a line on stdin, mallocs COUNT blocks of
 * 16 bytes and keeps every one of them, prints `held <COUNT>`, then waits
 * for stdin to close and exits without freeing: a process with COUNT
 * outstanding allocations, so the tracer's memory per tracked allocation can
 * be measured.
 *
 * Build: cc -O2 -g -fno-omit-frame-pointer -o hold hold.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((noinline)) static void *hold_site(void)
{
    return malloc(16);
}

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 10000000;
    char line[64];
    void **blocks = calloc(count, sizeof *blocks);
    if (!blocks)
        return 1;
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    for (long i = 0; i < count; i++)
        blocks[i] = hold_site();
    printf("held %ld\n", count);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
