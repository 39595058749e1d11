/*
 * stack_storm.c - a target whose behaviour alone would grow a tracer without
 * bound: distinct call stacks by the hundred thousand, processes by the
 * thousand, a name changed in a loop. For the --max-stacks and churn tests
 * (tests/bounded.rs) and the soak run of `cargo xtask bench`.
 *
 * Every allocation is made at the end of a path of DEPTH calls, each through
 * one of FANOUT functions chosen by a digit (base FANOUT) of the path's
 * number: path P always has the same stack, and no two paths share one.
 *
 * Protocol: stdout "ready <pid>", then one command per stdin line, each
 * answered with "done" once performed:
 *   leak              LEAK_COUNT blocks of LEAK_BYTES at storm_leak_site, kept
 *   storm FIRST N     paths FIRST..FIRST+N: malloc(32) at storm_bottom, freed
 *   keep FIRST N      paths FIRST..FIRST+N: malloc(KEEP_BYTES) at
 *                     storm_bottom, kept (KEEP_SLOTS at most): the same
 *                     stacks as "storm" over the same paths
 *   fork N            N children, one after the other: each allocates and
 *                     frees a block and exits (every 4th re-executes this
 *                     program as "child" first)
 *   rename N          N distinct task names (prctl), a malloc+free under
 *                     each, then the name "stack_storm" again
 *   reset             frees the kept blocks of "keep"
 * Built with frame pointers and without sibling-call optimisation (see
 * tests/support/workloads.rs), so each step of a path is a frame.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define FANOUT 8
#define DEPTH 6 /* 8^6 = 262,144 distinct stacks */
#define LEAK_COUNT 10
#define LEAK_BYTES 4242
#define KEEP_BYTES 77
#define KEEP_SLOTS 100000

static void *volatile leaked[LEAK_COUNT];
static void *volatile kept[KEEP_SLOTS];
static int kept_count;
/* Whether the bottom of the current path keeps its block. */
static int keeping;

NOINLINE void storm_leak_site(void)
{
    for (int i = 0; i < LEAK_COUNT; i++)
        leaked[i] = malloc(LEAK_BYTES);
}

/* The same call site for a freed and a kept block: a path's stack is the
 * same whether it keeps its block or not. */
NOINLINE void storm_bottom(void)
{
    void *p = malloc(keeping ? KEEP_BYTES : 32);
    if (keeping && kept_count < KEEP_SLOTS)
        kept[kept_count++] = p;
    else
        free(p);
}

typedef void (*step_fn)(unsigned path, int depth);
static step_fn steps[FANOUT];

static void step(unsigned path, int depth)
{
    if (depth == 0) {
        storm_bottom();
        return;
    }
    steps[path % FANOUT](path / FANOUT, depth - 1);
}

/* The result is used after the call, so it is never a tail call. */
static volatile int steps_taken;
#define STEP(n)                                                                \
    NOINLINE void storm_step##n(unsigned path, int depth)                      \
    {                                                                          \
        step(path, depth);                                                     \
        steps_taken++;                                                         \
    }
STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)

static void paths(unsigned first, unsigned count, int keep)
{
    keeping = keep;
    for (unsigned path = first; path < first + count; path++)
        step(path, DEPTH);
    keeping = 0;
}

NOINLINE void storm_child(void)
{
    void *volatile p = malloc(48);
    free(p);
}

static void forks(unsigned count, const char *self)
{
    for (unsigned i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            storm_child();
            if (i % 4 == 3)
                execl(self, self, "child", (char *)NULL);
            _exit(0);
        }
        if (pid > 0)
            waitpid(pid, NULL, 0);
    }
}

static void renames(unsigned count)
{
    char name[32];
    for (unsigned i = 0; i < count; i++) {
        snprintf(name, sizeof name, "storm-%u", i);
        prctl(PR_SET_NAME, name);
        storm_bottom();
    }
    prctl(PR_SET_NAME, "stack_storm");
}

int main(int argc, char **argv)
{
    step_fn all[FANOUT] = {storm_step0, storm_step1, storm_step2, storm_step3,
                           storm_step4, storm_step5, storm_step6, storm_step7};
    char line[128];
    unsigned first, count;

    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        storm_child();
        return 0;
    }
    memcpy(steps, all, sizeof all);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "leak", 4) == 0) {
            storm_leak_site();
        } else if (sscanf(line, "storm %u %u", &first, &count) == 2) {
            paths(first, count, 0);
        } else if (sscanf(line, "keep %u %u", &first, &count) == 2) {
            paths(first, count, 1);
        } else if (sscanf(line, "fork %u", &count) == 1) {
            forks(count, argv[0]);
        } else if (sscanf(line, "rename %u", &count) == 1) {
            renames(count);
        } else if (strncmp(line, "reset", 5) == 0) {
            for (int i = 0; i < kept_count; i++)
                free(kept[i]);
            kept_count = 0;
        } else {
            fprintf(stderr, "stack_storm: unknown command %s", line);
            return 2;
        }
        printf("done\n");
    }
    return 0;
}
