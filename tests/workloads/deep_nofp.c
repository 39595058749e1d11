/*
 * deep_nofp.c - leak sites four and more calls deep, in a build WITHOUT
 * frame pointers, for the DWARF unwinding tests (tests/unwind.rs).
 *
 * Build (done by tests/support/lib.rs):
 *   cc -O2 -g -fomit-frame-pointer -pthread
 *
 * Protocol: stdout "ready <pid>", then on stdin "go" perform every
 * allocation, print "done", and stay until stdin closes.
 *
 * Every function is noinline and noclone (so gcc keeps its name) and uses
 * its callee's result afterwards (so no call is a tail call): the chain of
 * each site is exactly the one written here. Each site leaks a distinct
 * size, so no two functions fold into one.
 *
 * KEEP IN SYNC with DEEP_SITES in tests/unwind.rs.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CALL __attribute__((noinline, noclone))

#define SINK_SLOTS 256
void *volatile sink[SINK_SLOTS];
static int sink_next;
/* Opaque to the optimiser: keeps loops and sizes as written. */
volatile int one = 1;

static void *keep(void *p)
{
    int i = __atomic_fetch_add(&sink_next, 1, __ATOMIC_RELAXED);
    if (p == NULL || i >= SINK_SLOTS) {
        fprintf(stderr, "deep_nofp: allocation failed or sink full\n");
        exit(2);
    }
    sink[i] = p;
    return p;
}

/* Chain A (main thread): deep_a1 -> deep_a2 -> deep_a3 -> deep_a4 -> malloc,
 * 6 x 1000 B. */
CALL long deep_a4(int n)
{
    return (long)keep(malloc(1000 * one)) + n;
}
CALL long deep_a3(int n)
{
    return deep_a4(n + 1) * 3;
}
CALL long deep_a2(int n)
{
    return deep_a3(n + 1) ^ 5;
}
CALL long deep_a1(int n)
{
    return deep_a2(n + 1) - 7;
}

/* Chain B (main thread): deep_b1 -> ... -> deep_b6 -> calloc, 3 x 40 x 50 B. */
CALL long deep_b6(int n)
{
    return (long)keep(calloc(40 * one, 50)) + n;
}
CALL long deep_b5(int n)
{
    return deep_b6(n + 2) * 11;
}
CALL long deep_b4(int n)
{
    return deep_b5(n + 2) ^ 13;
}
CALL long deep_b3(int n)
{
    return deep_b4(n + 2) - 17;
}
CALL long deep_b2(int n)
{
    return deep_b3(n + 2) * 19;
}
CALL long deep_b1(int n)
{
    return deep_b2(n + 2) ^ 23;
}

/* Chain C (a second thread): deep_c1 -> deep_c2 -> deep_c3 -> deep_c4 ->
 * realloc(NULL, ...), 4 x 3000 B. */
CALL long deep_c4(int n)
{
    return (long)keep(realloc(NULL, 3000 * one)) + n;
}
CALL long deep_c3(int n)
{
    return deep_c4(n + 3) * 29;
}
CALL long deep_c2(int n)
{
    return deep_c3(n + 3) ^ 31;
}
CALL long deep_c1(int n)
{
    return deep_c2(n + 3) - 37;
}

static void *thread_main(void *arg)
{
    long acc = 0;
    for (int i = 0; i < 4; i++)
        acc += deep_c1(i);
    return (void *)acc;
}

CALL long run_all(void)
{
    long acc = 0;
    pthread_t thread;
    for (int i = 0; i < 6; i++)
        acc += deep_a1(i);
    for (int i = 0; i < 3; i++)
        acc += deep_b1(i);
    if (pthread_create(&thread, NULL, thread_main, NULL) != 0 ||
        pthread_join(thread, NULL) != 0) {
        fprintf(stderr, "deep_nofp: thread failed\n");
        exit(2);
    }
    return acc;
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
