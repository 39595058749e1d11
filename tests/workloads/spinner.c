/* spinner.c - calls malloc and free as fast as it can, forever: a busy
 * service for tests that attach to it many times. Prints `ready <pid>`,
 * then `allocs <n>` for each line read on stdin (n = allocations so far),
 * and exits when stdin closes. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void *volatile sink;
static volatile uint64_t allocations;

static void *spin(void *unused)
{
    (void)unused;
    for (;;) {
        sink = malloc(64);
        free(sink);
        allocations++;
    }
    return NULL;
}

int main(void)
{
    pthread_t thread;
    char line[64];
    pthread_create(&thread, NULL, spin, NULL);
    printf("ready %d\n", getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        printf("allocs %llu\n", (unsigned long long)allocations);
        fflush(stdout);
    }
    return 0;
}
