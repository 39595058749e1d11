/* Known truth for heaptrack's views (peak, hot spots, temporary
 * allocations). `views` prints `ready <pid>`, waits for `go`, then:
 *   1. peak_site: PEAK_BLOCKS x PEAK_SIZE bytes, held HOLD_US, then freed
 *      (the peak: nothing else is live then);
 *   2. temp_site: TEMP_CALLS x TEMP_SIZE bytes, each freed at once
 *      (temporary);
 *   3. held_site: HELD_BLOCKS x HELD_SIZE bytes, held HOLD_US, then freed
 *      (not temporary: HOLD_US is three times the 100 ms limit);
 *   4. kept_site: KEPT_BLOCKS x KEPT_SIZE bytes, kept;
 * prints `done` and allocates nothing more until stdin closes.
 * KEEP IN SYNC with tests/verdicts.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

#define PEAK_BLOCKS 100
#define PEAK_SIZE 10000
#define TEMP_CALLS 1000
#define TEMP_SIZE 100
#define HELD_BLOCKS 20
#define HELD_SIZE 1000
#define KEPT_BLOCKS 50
#define KEPT_SIZE 1000
#define HOLD_US 300000

static void *blocks[PEAK_BLOCKS];

NOINLINE void *peak_site(void) { return malloc(PEAK_SIZE); }
NOINLINE void *temp_site(void) { return malloc(TEMP_SIZE); }
NOINLINE void *held_site(void) { return malloc(HELD_SIZE); }
NOINLINE void *kept_site(void) { return malloc(KEPT_SIZE); }

static void release(int count)
{
    for (int i = 0; i < count; i++)
        free(blocks[i]);
}

int main(void)
{
    char line[64];
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;

    for (int i = 0; i < PEAK_BLOCKS; i++)
        blocks[i] = peak_site();
    usleep(HOLD_US);
    release(PEAK_BLOCKS);

    for (int i = 0; i < TEMP_CALLS; i++) {
        void *p = temp_site();
        memset(p, 1, TEMP_SIZE);
        free(p);
    }

    for (int i = 0; i < HELD_BLOCKS; i++)
        blocks[i] = held_site();
    usleep(HOLD_US);
    release(HELD_BLOCKS);

    for (int i = 0; i < KEPT_BLOCKS; i++)
        blocks[i] = kept_site();

    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
