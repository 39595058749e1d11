/* Three kinds of heap growth side by side, for the leak analysis tests.
 *
 * `growth leak|clean [STEPS] [run]` prints `ready <pid>`, waits for `go`
 * (with `run`: starts at once, for launch mode), then:
 *   - fills a cache of CACHE_BLOCKS x CACHE_BLOCK bytes at once (cache_site),
 *   - runs STEPS steps (default 80), one every STEP_US, each of which
 *       - replaces the cache's oldest block (constant size: a plateau; the
 *         same call path as the fill, so the cache is one stack),
 *       - adds a POOL_BLOCK to a pool that is released every POOL_BLOCKS
 *         steps (a sawtooth),
 *       - in `leak` mode only, leaks LEAK_SIZE bytes (leak_site),
 *   - prints `done` and allocates nothing more until stdin closes (with
 *     `run`: exits 0).
 *
 * Ground truth once `done` is printed, with STEPS a multiple of POOL_BLOCKS:
 *   leak_site  STEPS x LEAK_SIZE bytes in STEPS blocks (0 in `clean` mode),
 *   cache_site CACHE_BLOCKS x CACHE_BLOCK bytes in CACHE_BLOCKS blocks,
 *   pool_site  nothing.
 * KEEP IN SYNC with tests/analysis.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

#define LEAK_SIZE 4096
#define CACHE_BLOCKS 128
#define CACHE_BLOCK 65536
#define POOL_BLOCKS 16
#define POOL_BLOCK 4096
#define STEP_US 50000
#define MAX_STEPS 100000

static void *leaked[MAX_STEPS];
static void *cache[CACHE_BLOCKS];
static void *pool[POOL_BLOCKS];

NOINLINE void *leak_site(void)
{
    return malloc(LEAK_SIZE);
}

NOINLINE void *cache_site(void)
{
    return malloc(CACHE_BLOCK);
}

/* Evicts whatever the slot holds and puts a new block there. */
NOINLINE void cache_put(int slot)
{
    free(cache[slot]);
    cache[slot] = cache_site();
}

NOINLINE void *pool_site(void)
{
    return malloc(POOL_BLOCK);
}

int main(int argc, char **argv)
{
    int leak = argc > 1 && strcmp(argv[1], "leak") == 0;
    int steps = argc > 2 ? atoi(argv[2]) : 80;
    int run = argc > 3 && strcmp(argv[3], "run") == 0;
    char line[64];
    if (steps < 0 || steps > MAX_STEPS)
        return 2;
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!run && !fgets(line, sizeof line, stdin))
        return 1;

    int pooled = 0;
    /* Negative steps fill the cache, all at once. */
    for (int step = -CACHE_BLOCKS; step < steps; step++) {
        cache_put((step + CACHE_BLOCKS) % CACHE_BLOCKS);
        if (step < 0)
            continue;

        pool[pooled++] = pool_site();
        if (pooled == POOL_BLOCKS) {
            for (int i = 0; i < POOL_BLOCKS; i++)
                free(pool[i]);
            pooled = 0;
        }

        if (leak)
            leaked[step] = leak_site();
        usleep(STEP_US);
    }

    printf("done\n");
    fflush(stdout);
    if (run)
        return 0;
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
