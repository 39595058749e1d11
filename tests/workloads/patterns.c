/* The leak-verdict battery: nine heap patterns with known verdicts, side by
 * side in one process, each from its own allocation site (a noinline
 * function whose name says the verdict: `leak_*` leaks, nothing else does).
 *
 * `patterns [SECONDS] [run|warm]` starts up (the start-up burst and the
 * cache's fill; with `warm`, before `ready`, as a service is when a tracer
 * attaches to it), prints `ready <pid>`, waits for `go` (with `run`: starts
 * at once, for launch mode), runs every pattern for SECONDS (default 6) in
 * steps of STEP_NS on one thread, then prints `done` and allocates nothing
 * more until stdin closes (with `run`: exits 0).
 *
 * Leaks:
 *   leak_steady_site   512 B every 5 steps (~50 KiB/s), from the first step;
 *   leak_traffic_site  64 B per request; requests come in bursts (3 per step
 *                      for 0.35 s, none for 0.35 s), each with a 2 KiB scratch
 *                      buffer freed at once (traffic_scratch_site);
 *   leak_late_site     1 KiB every 5 steps (~100 KiB/s), from 40% of the run;
 *   leak_churn_site    20 blocks of 256 B per step, all freed at once but one
 *                      kept every 10th step (~12.5 KiB/s kept out of
 *                      ~2.5 MiB/s allocated).
 * Not leaks:
 *   cache_inplace_site 512 x 1 KiB, filled at the first step, then one random
 *                      entry replaced each step, all through one call: one
 *                      stack, flat;
 *   cache_entry_site   4096 x 1 KiB, filled at the start by cache_fill, then
 *                      refreshed oldest-first by cache_refresh, one entry per
 *                      step: the refresh stack rises ~500 KiB/s for the whole
 *                      run while the fill stack falls as fast (with `warm`,
 *                      the fill is before attach: each refresh frees a block
 *                      the tracer never saw); the cache's total never
 *                      changes;
 *   pool_site          4 KiB blocks up to 2 MiB x (1 - e^(-t / 0.6 s)): grows,
 *                      levels off, never shrinks;
 *   batch_site         2 KiB per step for 350 steps, then all freed: a
 *                      sawtooth;
 *   startup_site       3 MiB in 1 KiB blocks at the start, kept.
 * KEEP IN SYNC with tests/verdicts.rs and xtask/src/verdicts.rs. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

#define STEP_NS 2000000L
#define STEPS_PER_S 500

#define INPLACE_ENTRIES 512
#define CACHE_ENTRIES 4096
#define POOL_MAX_BLOCKS 512
#define BATCH_STEPS 350
#define STARTUP_BLOCKS 3072
#define MAX_KEPT 200000

static void *kept[MAX_KEPT];
static int kept_count;
static void *inplace[INPLACE_ENTRIES];
static void *cache[CACHE_ENTRIES];
static void *pool[POOL_MAX_BLOCKS];
static int pool_blocks;
static void *batch[BATCH_STEPS];
static int batch_blocks;
static void *startup[STARTUP_BLOCKS];

static void keep(void *p)
{
    if (kept_count < MAX_KEPT)
        kept[kept_count++] = p;
}

/* Writes the block so the allocation is real work, as a program's would be. */
static void *touch(void *p, size_t size)
{
    if (p)
        memset(p, 0x5a, size < 64 ? size : 64);
    return p;
}

NOINLINE void *leak_steady_site(void) { return touch(malloc(512), 512); }
NOINLINE void *leak_traffic_site(void) { return touch(malloc(64), 64); }
NOINLINE void *traffic_scratch_site(void) { return touch(malloc(2048), 2048); }
NOINLINE void *leak_late_site(void) { return touch(malloc(1024), 1024); }
NOINLINE void *leak_churn_site(void) { return touch(malloc(256), 256); }
NOINLINE void *cache_inplace_site(void) { return touch(malloc(1024), 1024); }
NOINLINE void *cache_entry_site(void) { return touch(malloc(1024), 1024); }
NOINLINE void *pool_site(void) { return touch(malloc(4096), 4096); }
NOINLINE void *batch_site(void) { return touch(malloc(2048), 2048); }
NOINLINE void *startup_site(void) { return touch(malloc(1024), 1024); }

NOINLINE void cache_inplace_put(int slot)
{
    free(inplace[slot]);
    inplace[slot] = cache_inplace_site();
}

NOINLINE void cache_fill(void)
{
    for (int i = 0; i < CACHE_ENTRIES; i++)
        cache[i] = cache_entry_site();
}

NOINLINE void cache_refresh(int slot)
{
    free(cache[slot]);
    cache[slot] = cache_entry_site();
}

NOINLINE void handle_request(void)
{
    void *scratch = traffic_scratch_site();
    keep(leak_traffic_site());
    free(scratch);
}

NOINLINE void churn(int keep_one)
{
    for (int i = 0; i < 20; i++) {
        void *p = leak_churn_site();
        if (keep_one && i == 0)
            keep(p);
        else
            free(p);
    }
}

NOINLINE void start_up(void)
{
    for (int i = 0; i < STARTUP_BLOCKS; i++)
        startup[i] = startup_site();
    cache_fill();
}

/* e^(-1 / (0.6 s x STEPS_PER_S)): the pool's shortfall shrinks by this each
 * step (no libm, so the workload builds with the tests' plain cc line). */
#define POOL_DECAY 0.99667221605
static double pool_shortfall = 1.0;

static void step(long n, long steps)
{
    if (n % 5 == 0)
        keep(leak_steady_site());

    /* Bursts of traffic: on for 0.35 s, off for 0.35 s. */
    if (n % 350 < 175)
        for (int i = 0; i < 3; i++)
            handle_request();

    if (n >= steps * 4 / 10 && n % 5 == 0)
        keep(leak_late_site());

    churn(n % 10 == 0);

    /* One call site for the fill (first step) and the refresh: one stack. */
    for (int i = 0; i < (n == 0 ? INPLACE_ENTRIES : 1); i++)
        cache_inplace_put(n == 0 ? i : rand() % INPLACE_ENTRIES);
    cache_refresh(n % CACHE_ENTRIES);

    pool_shortfall *= POOL_DECAY;
    int pool_target = (int)(POOL_MAX_BLOCKS * (1.0 - pool_shortfall));
    while (pool_blocks < pool_target && pool_blocks < POOL_MAX_BLOCKS)
        pool[pool_blocks++] = pool_site();

    batch[batch_blocks++] = batch_site();
    if (batch_blocks == BATCH_STEPS) {
        for (int i = 0; i < BATCH_STEPS; i++)
            free(batch[i]);
        batch_blocks = 0;
    }
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 6.0;
    int run = argc > 2 && strcmp(argv[2], "run") == 0;
    int warm = argc > 2 && strcmp(argv[2], "warm") == 0;
    char line[64];
    if (seconds <= 0 || seconds > 3600)
        return 2;
    if (warm)
        start_up();
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!run && !fgets(line, sizeof line, stdin))
        return 1;

    srand(1);
    if (!warm)
        start_up();
    long steps = (long)(seconds * STEPS_PER_S);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long n = 0; n < steps; n++) {
        step(n, steps);
        next.tv_nsec += STEP_NS;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }

    printf("done\n");
    fflush(stdout);
    if (run)
        return 0;
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
