/*
 * inline.c - allocations made inside inlined functions, for the inlined
 * frame test (tests/unwind.rs).
 *
 * Build (done by tests/support/lib.rs): cc -O2 -g -pthread
 *
 * Protocol: stdout "ready <pid>", then on stdin "go" allocate, print
 * "done", and stay until stdin closes.
 *
 * add_record (noinline) calls new_record, which gcc must inline
 * (always_inline), which calls alloc_payload, also inlined, which calls
 * malloc. So the allocator's caller is one address in add_record that
 * stands for three source functions: the report must show
 * alloc_payload <- new_record <- add_record, each with its own line.
 * The lines are found by the markers at the end of them (LINE:...).
 *
 * KEEP IN SYNC with tests/unwind.rs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INLINE static inline __attribute__((always_inline))

void *volatile sink[64];
volatile int one = 1;

INLINE void *alloc_payload(size_t size)
{
    return malloc(size * one); /* LINE:malloc */
}

INLINE void *new_record(int i)
{
    return alloc_payload(700 + (size_t)i * 0); /* LINE:alloc_payload */
}

__attribute__((noinline)) void add_record(int i)
{
    sink[i] = new_record(i); /* LINE:new_record */
    if (sink[i] == NULL)
        exit(2);
}

int main(void)
{
    char line[64];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL || strncmp(line, "go", 2) != 0)
        return 1;
    for (int i = 0; i < 5; i++)
        add_record(i);
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL)
        ;
    return 0;
}
