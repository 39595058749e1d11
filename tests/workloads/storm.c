/*
 * storm.c - one short-lived process of a storm, for the host-wide tests:
 * leaks STORM_BYTES at storm_leak, frees a second block, and exits at once.
 * A shell loop runs it hundreds of times a second.
 */
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))
#define STORM_BYTES 100

void *volatile sink;

NOINLINE void storm_leak(void)
{
    sink = malloc(STORM_BYTES);
}

NOINLINE void storm_churn(void)
{
    void *volatile p = malloc(64);
    free(p);
}

int main(void)
{
    storm_leak();
    storm_churn();
    return 0;
}
