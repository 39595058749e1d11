/*
 * leaky.c - multi-threaded workload with known allocation sites for the
 * alloctrace integration tests.
 *
 * Build (done by tests/support/lib.rs):
 *   cc -O1 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -pthread
 *
 * Protocol:
 *   stdout "ready <pid>\n"   then read one line from stdin
 *   on "go":  perform every allocation below, print "done\n"
 *   argv[1] == "exit": return 0 right away; otherwise wait for stdin EOF.
 *
 * Every site_* function is noinline and calls the allocator itself (never a
 * tail call: the result is stored afterwards), so frames[0] of its stacks is
 * the site.  Helper functions that are NOT sites deliberately do not start
 * with "site_".
 *
 * KEEP IN SYNC with SITES in tests/support/lib.rs (expected bytes/count).
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

/* Everything allocated escapes into this global so nothing is optimised
 * away (gcc may delete malloc/free pairs whose pointer does not escape). */
#define SINK_SLOTS 1024
void *volatile sink[SINK_SLOTS];
static int sink_next;

static void *keep(void *p)
{
    int i;
    if (p == NULL) {
        fprintf(stderr, "leaky: allocation failed\n");
        exit(2);
    }
    i = __atomic_fetch_add(&sink_next, 1, __ATOMIC_RELAXED);
    if (i >= SINK_SLOTS) {
        fprintf(stderr, "leaky: sink full\n");
        exit(2);
    }
    sink[i] = p;
    return p;
}

/* ---- plain malloc ---------------------------------------------------- */

/* 10 x 24 B = 240 B */
NOINLINE void site_malloc_small(void)
{
    for (int i = 0; i < 10; i++)
        keep(malloc(24));
}

/* 5 x 4000 B = 20000 B */
NOINLINE void site_malloc_medium(void)
{
    for (int i = 0; i < 5; i++)
        keep(malloc(4000));
}

/* 1 x 200000 B (above the 128 KiB mmap threshold) */
NOINLINE void site_malloc_large(void)
{
    keep(malloc(200000));
}

/* 4 x calloc(25, 8) = 4 x 200 = 800 B */
NOINLINE void site_calloc(void)
{
    for (int i = 0; i < 4; i++)
        keep(calloc(25, 8));
}

/* ---- realloc chain: 16 -> 64 -> 1024 -> 16384 -> 65536 -> 262144 -> 1 MiB
 * Only site_chain_final (1048576 B, 1 block) may be reported. */
void *volatile chain;

NOINLINE void site_chain_start(void)
{
    chain = keep(malloc(16));
}

NOINLINE void site_chain_grow(size_t n)
{
    void *p = realloc(chain, n);
    if (p == NULL)
        exit(2);
    chain = p;
}

NOINLINE void site_chain_final(void)
{
    void *p = realloc(chain, 1048576);
    if (p == NULL)
        exit(2);
    chain = p;
}

static void run_chain(void)
{
    static const size_t steps[] = {64, 1024, 16384, 65536, 262144};
    site_chain_start();
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        site_chain_grow(steps[i]);
    site_chain_final();
}

/* 3 x realloc(NULL, 3000) = 9000 B.  The NULL comes from a volatile so gcc
 * cannot rewrite the call into malloc(3000). */
void *volatile null_ptr;

NOINLINE void site_realloc_null(void)
{
    for (int i = 0; i < 3; i++)
        keep(realloc(null_ptr, 3000));
}

/* ---- realloc shrink: 2 x malloc(10000) then realloc(p, 100)
 * site_shrink_alloc: nothing; site_realloc_shrink: 2 x 100 = 200 B */
void *volatile shrink_blocks[2];

NOINLINE void site_shrink_alloc(void)
{
    for (int i = 0; i < 2; i++)
        shrink_blocks[i] = keep(malloc(10000));
}

NOINLINE void site_realloc_shrink(void)
{
    for (int i = 0; i < 2; i++) {
        void *p = realloc(shrink_blocks[i], 100);
        if (p == NULL)
            exit(2);
        shrink_blocks[i] = p;
    }
}

/* ---- realloc(p, 0) frees p: 3 x (malloc(500); realloc(p, 0)) -> nothing */
void *volatile zero_result;

NOINLINE void site_realloc_zero(void)
{
    for (int i = 0; i < 3; i++) {
        void *volatile p = malloc(500);
        if (p == NULL)
            exit(2);
        zero_result = realloc(p, 0); /* glibc 2.36: frees p, returns NULL */
    }
}

/* ---- reallocarray: 2 x (reallocarray(NULL, 10, 12) then grow to (100, 12))
 * = 2 x 1200 = 2400 B */
NOINLINE void site_reallocarray(void)
{
    for (int i = 0; i < 2; i++) {
        void *p = reallocarray(null_ptr, 10, 12);
        if (p == NULL)
            exit(2);
        sink[SINK_SLOTS - 1 - i] = p;
        p = reallocarray(p, 100, 12);
        if (p == NULL)
            exit(2);
        sink[SINK_SLOTS - 1 - i] = p;
    }
}

/* ---- aligned allocators -------------------------------------------- */

/* 3 x posix_memalign(64, 1000) = 3000 B */
NOINLINE void site_posix_memalign(void)
{
    for (int i = 0; i < 3; i++) {
        void *p = NULL;
        if (posix_memalign(&p, 64, 1000) != 0)
            exit(2);
        keep(p);
    }
}

/* 2 x aligned_alloc(256, 512) = 1024 B */
NOINLINE void site_aligned_alloc(void)
{
    for (int i = 0; i < 2; i++)
        keep(aligned_alloc(256, 512));
}

/* 2 x memalign(128, 700) = 1400 B */
NOINLINE void site_memalign(void)
{
    for (int i = 0; i < 2; i++)
        keep(memalign(128, 700));
}

/* 2 x valloc(5000) = 10000 B */
NOINLINE void site_valloc(void)
{
    for (int i = 0; i < 2; i++)
        keep(valloc(5000));
}

/* pvalloc is declared by <malloc.h> in glibc; declare it again in case. */
extern void *pvalloc(size_t size);

/* 2 x pvalloc(6000) = 12000 B (requested size, not the page-rounded one) */
NOINLINE void site_pvalloc(void)
{
    for (int i = 0; i < 2; i++)
        keep(pvalloc(6000));
}

/* ---- allocated on one thread, freed on another: nothing -------------- */
#define CROSS_N 8
void *volatile cross_blocks[CROSS_N];

NOINLINE void site_cross_thread_alloc(void)
{
    for (int i = 0; i < CROSS_N; i++) {
        void *p = malloc(333);
        if (p == NULL)
            exit(2);
        cross_blocks[i] = p;
    }
}

static void *cross_alloc_thread(void *arg)
{
    (void)arg;
    site_cross_thread_alloc();
    return NULL;
}

NOINLINE static void cross_thread_free_all(void)
{
    for (int i = 0; i < CROSS_N; i++) {
        free(cross_blocks[i]);
        cross_blocks[i] = NULL;
    }
}

static void *cross_free_thread(void *arg)
{
    (void)arg;
    cross_thread_free_all();
    return NULL;
}

static void run_cross_thread(void)
{
    pthread_t a, b;
    if (pthread_create(&a, NULL, cross_alloc_thread, NULL) != 0)
        exit(2);
    pthread_join(a, NULL);
    if (pthread_create(&b, NULL, cross_free_thread, NULL) != 0)
        exit(2);
    pthread_join(b, NULL);
}

/* ---- half freed: 20 x malloc(128), 10 freed -> 10 x 128 = 1280 B ------ */
#define HALF_N 20
void *volatile half_blocks[HALF_N];

NOINLINE void site_half_freed(void)
{
    for (int i = 0; i < HALF_N; i++) {
        void *p = malloc(128);
        if (p == NULL)
            exit(2);
        half_blocks[i] = p;
    }
}

NOINLINE static void free_every_other(void)
{
    for (int i = 0; i < HALF_N; i += 2) {
        free(half_blocks[i]);
        half_blocks[i] = NULL;
    }
}

/* ---- fully freed: 16 x malloc(2048), all freed -> nothing ------------ */
#define FULL_N 16
void *volatile full_blocks[FULL_N];

NOINLINE void site_fully_freed(void)
{
    for (int i = 0; i < FULL_N; i++) {
        void *p = malloc(2048);
        if (p == NULL)
            exit(2);
        full_blocks[i] = p;
    }
}

NOINLINE static void free_all_full(void)
{
    for (int i = 0; i < FULL_N; i++) {
        free(full_blocks[i]);
        full_blocks[i] = NULL;
    }
}

/* ---- concurrent threads: 4 threads x 25 x malloc(64)
 * = 100 blocks, 6400 B at one site --------------------------------------- */
#define THREADS 4
#define PER_THREAD 25
static pthread_barrier_t barrier;

NOINLINE void site_threads(void)
{
    for (int i = 0; i < PER_THREAD; i++)
        keep(malloc(64));
}

static void *threads_worker(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&barrier);
    site_threads();
    return NULL;
}

static void run_threads(void)
{
    pthread_t t[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, threads_worker, NULL) != 0)
            exit(2);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&barrier);
}

NOINLINE static void run_all(void)
{
    site_malloc_small();
    site_malloc_medium();
    site_malloc_large();
    site_calloc();
    run_chain();
    site_realloc_null();
    site_shrink_alloc();
    site_realloc_shrink();
    site_realloc_zero();
    site_reallocarray();
    site_posix_memalign();
    site_aligned_alloc();
    site_memalign();
    site_valloc();
    site_pvalloc();
    run_cross_thread();
    site_half_freed();
    free_every_other();
    site_fully_freed();
    free_all_full();
    run_threads();
}

int main(int argc, char **argv)
{
    char line[64];
    int exit_after_done = argc > 1 && strcmp(argv[1], "exit") == 0;

    printf("ready %d\n", (int)getpid());
    fflush(stdout);

    if (fgets(line, sizeof line, stdin) == NULL)
        return 1;
    if (strncmp(line, "go", 2) != 0) {
        fprintf(stderr, "leaky: expected 'go', got '%s'\n", line);
        return 1;
    }

    /* A second argument renames the process first: host-wide `--comm`
     * must notice names that change under it. */
    if (argc > 2)
        prctl(PR_SET_NAME, argv[2], 0, 0, 0);

    run_all();

    printf("done\n");
    fflush(stdout);

    if (exit_after_done)
        return 0;

    while (fgets(line, sizeof line, stdin) != NULL)
        ;
    return 0;
}
