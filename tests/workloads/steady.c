/* Steady allocator traffic with nothing leaked: `steady SECONDS` prints
 * `ready <pid>`, waits for `go`, then for SECONDS runs aligned_alloc + free
 * pairs about 1,700 times a second (a usleep between pairs), prints `done`,
 * and waits for stdin to close. Every block is freed right away, so a correct
 * tracer reports nothing outstanding from `steady_site` and no frees of
 * unknown blocks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void *volatile sink;

__attribute__((noinline)) static void *steady_site(void)
{
    return aligned_alloc(64, 256);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 6.0;
    char line[64];
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    double end = now() + seconds;
    while (now() < end) {
        sink = steady_site();
        free(sink);
        usleep(500);
    }
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
