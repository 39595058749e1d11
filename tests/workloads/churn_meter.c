/*
 * churn_meter.c - measures its own malloc+free speed on request.
 *
 * Protocol: prints "ready <pid>"; for each "measure" line on stdin, runs
 * malloc+free pairs for about 200 ms and prints "ns <nanoseconds per pair>";
 * exits on stdin EOF.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void *volatile sink;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void)
{
    char line[64];
    printf("ready %d\n", getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "measure", 7) != 0)
            continue;
        long pairs = 0;
        double start = now(), elapsed;
        do {
            for (int i = 0; i < 64; i++) {
                sink = malloc(16 + (pairs + i) % 1024);
                free(sink);
            }
            pairs += 64;
            elapsed = now() - start;
        } while (elapsed < 0.2);
        printf("ns %.1f\n", elapsed * 1e9 / pairs);
        fflush(stdout);
    }
    return 0;
}
