/*
 * churn_meter.c - measures its own malloc+free speed on request.
 *
 * Protocol: prints "ready <pid>"; for each "measure" line on stdin, runs
 * malloc+free pairs for about 200 ms and prints "ns <nanoseconds per pair>";
 * for a "fork" line, forks a child that keeps allocating until the parent
 * exits, and prints "child <pid>"; exits on stdin EOF.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
        if (strncmp(line, "fork", 4) == 0) {
            pid_t child = fork();
            if (child == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                for (;;) {
                    sink = malloc(64);
                    free(sink);
                    usleep(1000);
                }
            }
            printf("child %d\n", (int)child);
            fflush(stdout);
            continue;
        }
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
