/* forkstay.c - `forkstay COUNT`: prints `ready <pid>`, waits for `go`,
 * then forks COUNT children that call malloc and free in a loop, each
 * counting its calls in memory shared with the parent, and prints
 * `forked <pid>...`. For each further line on stdin prints
 * `calls <fewest calls of a child> dead <children that died>`. Its
 * children die with it. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CHILDREN 64

void *volatile sink;

int main(int argc, char **argv)
{
    char line[64];
    int count = argc > 1 ? atoi(argv[1]) : 4, dead = 0;
    pid_t children[MAX_CHILDREN];
    volatile uint64_t *calls = mmap(NULL, sizeof(uint64_t) * MAX_CHILDREN, PROT_READ | PROT_WRITE,
                                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (calls == MAP_FAILED || count > MAX_CHILDREN)
        return 2;
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    sink = malloc(100);
    free(sink);
    printf("forked");
    for (int i = 0; i < count; i++) {
        children[i] = fork();
        if (children[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
            for (;;) {
                sink = malloc(48);
                free(sink);
                calls[i]++;
            }
        }
        printf(" %d", children[i]);
    }
    printf("\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        uint64_t fewest = UINT64_MAX;
        int status;
        while (waitpid(-1, &status, WNOHANG) > 0)
            dead++;
        for (int i = 0; i < count; i++)
            if (calls[i] < fewest)
                fewest = calls[i];
        printf("calls %llu dead %d\n", (unsigned long long)fewest, dead);
        fflush(stdout);
    }
    return 0;
}
