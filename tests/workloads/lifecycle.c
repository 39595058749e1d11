/*
 * lifecycle.c - workloads for alloctrace's launch mode and process-lifecycle
 * tests (threads, fork, exec, address reuse across threads).  Each mode runs
 * to completion on its own, so it can be started by `alloctrace -- CMD`.
 *
 * Build (done by tests/support/lib.rs):
 *   cc -O1 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -pthread
 *
 * Usage: lifecycle MODE
 *   early   a constructor allocates (and starts a thread that allocates)
 *           before main; main leaks too; exits with status 3.
 *   fork    the parent leaks, forks; the child frees the parent's blocks
 *           and leaks its own; the parent waits, then leaks again.
 *   exec    leaks, then execs itself as `lifecycle after-exec`, which
 *           leaks at another site and exits 0.
 *   failures  allocations that fail (NULL, EINVAL, ENOMEM) from every
 *           entry point; only site_fail_survivor's block is outstanding.
 *   sampling  SAMPLE_SMALL_BLOCKS small blocks and SAMPLE_LARGE_BLOCKS large
 *           ones kept, and as many small ones freed right away: ground truth
 *           for --sample-rate's estimates.
 *   stress  STRESS_PRODUCERS threads allocate same-size blocks and hand them
 *           to STRESS_CONSUMERS threads that free them (addresses are reused
 *           across threads and CPUs all the time); every 100th block leaks.
 *
 * Every site_* function is noinline and calls the allocator itself, so
 * frames[0] of its stacks is the site.
 * KEEP IN SYNC with the constants in tests/lifecycle.rs.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

#define SINK_SLOTS 100000
void *volatile sink[SINK_SLOTS];
static int sink_next;

static void *keep(void *p)
{
    int i = __atomic_fetch_add(&sink_next, 1, __ATOMIC_RELAXED);
    if (p == NULL || i >= SINK_SLOTS) {
        fprintf(stderr, "lifecycle: allocation failed or sink full\n");
        exit(2);
    }
    sink[i] = p;
    return p;
}

/* ---- early ------------------------------------------------------------ */

/* 1 x 1111 B, before main */
NOINLINE void site_constructor(void) { keep(malloc(1111)); }

/* 3 x 2222 B, on a thread started before main */
NOINLINE void site_early_thread(void)
{
    for (int i = 0; i < 3; i++)
        keep(malloc(2222));
}

/* 4 x 333 B, in main */
NOINLINE void site_main(void)
{
    for (int i = 0; i < 4; i++)
        keep(malloc(333));
}

static pthread_t early_thread;

static void *early_thread_main(void *arg)
{
    (void)arg;
    site_early_thread();
    return NULL;
}

__attribute__((constructor)) static void early(void)
{
    site_constructor();
    pthread_create(&early_thread, NULL, early_thread_main, NULL);
}

static int run_early(void)
{
    pthread_join(early_thread, NULL);
    site_main();
    return 3;
}

/* ---- fork ------------------------------------------------------------- */

/* 10 x 1000 B, parent before fork */
NOINLINE void site_before_fork(void)
{
    for (int i = 0; i < 10; i++)
        keep(malloc(1000));
}

/* 5 x 2000 B, in the child: must not be traced */
NOINLINE void site_in_child(void)
{
    for (int i = 0; i < 5; i++)
        keep(malloc(2000));
}

/* 3 x 3000 B, parent after the child exited */
NOINLINE void site_after_fork(void)
{
    for (int i = 0; i < 3; i++)
        keep(malloc(3000));
}

static int run_fork(void)
{
    site_before_fork();
    pid_t child = fork();
    if (child == 0) {
        /* The child's copies of the parent's blocks: freeing them must not
         * touch the parent's ledger. */
        for (int i = 0; i < 10; i++)
            free(sink[i]);
        site_in_child();
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    site_after_fork();
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

/* ---- exec ------------------------------------------------------------- */

/* 5 x 500 B before execve */
NOINLINE void site_before_exec(void)
{
    for (int i = 0; i < 5; i++)
        keep(malloc(500));
}

/* 7 x 700 B in the new program: after the exec, not traced */
NOINLINE void site_after_exec(void)
{
    for (int i = 0; i < 7; i++)
        keep(malloc(700));
}

static int run_exec(const char *self)
{
    site_before_exec();
    /* alloctrace symbolizes a stack when it drains it (every 10 ms), from
     * the process's current maps: give it time before they are replaced. */
    usleep(100 * 1000);
    execl(self, self, "after-exec", (char *)NULL);
    perror("execl");
    return 1;
}

static int run_after_exec(void)
{
    site_after_exec();
    /* Linger so a tracer that wrongly followed the exec would see these. */
    usleep(300 * 1000);
    return 0;
}

/* ---- failures --------------------------------------------------------- */

#define HUGE ((size_t)1 << 62)

/* 1 x 100 B: the block a failed realloc must leave where it was */
NOINLINE void *site_fail_survivor(void) { return keep(malloc(100)); }

/* each of these fails and must not be recorded */
NOINLINE void site_failing_calls(void *survivor)
{
    void *p = NULL;
    if (malloc(HUGE) != NULL || calloc(HUGE, 16) != NULL ||
        realloc(survivor, HUGE) != NULL || reallocarray(NULL, HUGE, 16) != NULL ||
        aligned_alloc(64, HUGE) != NULL || memalign(64, HUGE) != NULL ||
        valloc(HUGE) != NULL || posix_memalign(&p, 3, 64) == 0 ||
        posix_memalign(&p, 64, HUGE) == 0) {
        fprintf(stderr, "lifecycle: an allocation that should fail succeeded\n");
        exit(2);
    }
}

static int run_failures(void)
{
    site_failing_calls(site_fail_survivor());
    return 0;
}

/* ---- sampling ---------------------------------------------------------- */

#define SAMPLE_SMALL_BLOCKS 200000
#define SAMPLE_SMALL_SIZE 64
#define SAMPLE_LARGE_BLOCKS 20
#define SAMPLE_LARGE_SIZE (1 << 20)

static void *sample_kept[SAMPLE_SMALL_BLOCKS + SAMPLE_LARGE_BLOCKS];

NOINLINE void *site_sample_small(void) { return malloc(SAMPLE_SMALL_SIZE); }
NOINLINE void *site_sample_large(void) { return malloc(SAMPLE_LARGE_SIZE); }
NOINLINE void *site_sample_churn(void) { return malloc(SAMPLE_SMALL_SIZE); }

static int run_sampling(void)
{
    for (int i = 0; i < SAMPLE_SMALL_BLOCKS; i++) {
        sample_kept[i] = site_sample_small();
        void *churned = site_sample_churn();
        memset(churned, i, SAMPLE_SMALL_SIZE);
        free(churned);
    }
    for (int i = 0; i < SAMPLE_LARGE_BLOCKS; i++)
        sample_kept[SAMPLE_SMALL_BLOCKS + i] = site_sample_large();
    return 0;
}

/* ---- stress ----------------------------------------------------------- */

#define STRESS_PRODUCERS 4
#define STRESS_CONSUMERS 4
#define STRESS_PER_PRODUCER 25000
#define STRESS_SIZE 48
#define STRESS_LEAK_EVERY 100
#define QUEUE_SLOTS 4096

static void *queue[QUEUE_SLOTS];
static int queue_head, queue_tail, producers_left = STRESS_PRODUCERS;
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_changed = PTHREAD_COND_INITIALIZER;

/* STRESS_PRODUCERS * STRESS_PER_PRODUCER / STRESS_LEAK_EVERY blocks of
 * STRESS_SIZE bytes leak from here */
NOINLINE void *site_stress_leak(void) { return malloc(STRESS_SIZE); }

/* the rest is freed by another thread */
NOINLINE void *site_stress_churn(void) { return malloc(STRESS_SIZE); }

static void *producer(void *arg)
{
    (void)arg;
    for (int i = 1; i <= STRESS_PER_PRODUCER; i++) {
        if (i % STRESS_LEAK_EVERY == 0) {
            keep(site_stress_leak());
            continue;
        }
        void *block = site_stress_churn();
        memset(block, i, STRESS_SIZE);
        pthread_mutex_lock(&queue_lock);
        while ((queue_tail + 1) % QUEUE_SLOTS == queue_head)
            pthread_cond_wait(&queue_changed, &queue_lock);
        queue[queue_tail] = block;
        queue_tail = (queue_tail + 1) % QUEUE_SLOTS;
        pthread_cond_broadcast(&queue_changed);
        pthread_mutex_unlock(&queue_lock);
    }
    pthread_mutex_lock(&queue_lock);
    producers_left--;
    pthread_cond_broadcast(&queue_changed);
    pthread_mutex_unlock(&queue_lock);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&queue_lock);
        while (queue_head == queue_tail && producers_left > 0)
            pthread_cond_wait(&queue_changed, &queue_lock);
        if (queue_head == queue_tail) {
            pthread_mutex_unlock(&queue_lock);
            return NULL;
        }
        void *block = queue[queue_head];
        queue_head = (queue_head + 1) % QUEUE_SLOTS;
        pthread_cond_broadcast(&queue_changed);
        pthread_mutex_unlock(&queue_lock);
        free(block);
    }
}

static int run_stress(void)
{
    pthread_t threads[STRESS_PRODUCERS + STRESS_CONSUMERS];
    for (int i = 0; i < STRESS_PRODUCERS + STRESS_CONSUMERS; i++)
        pthread_create(&threads[i], NULL, i < STRESS_PRODUCERS ? producer : consumer, NULL);
    for (int i = 0; i < STRESS_PRODUCERS + STRESS_CONSUMERS; i++)
        pthread_join(threads[i], NULL);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    int status;
    if (strcmp(mode, "early") == 0)
        status = run_early();
    else if (strcmp(mode, "fork") == 0)
        status = run_fork();
    else if (strcmp(mode, "exec") == 0)
        status = run_exec(argv[0]);
    else if (strcmp(mode, "after-exec") == 0)
        status = run_after_exec();
    else if (strcmp(mode, "sampling") == 0)
        status = run_sampling();
    else if (strcmp(mode, "failures") == 0)
        status = run_failures();
    else if (strcmp(mode, "stress") == 0)
        status = run_stress();
    else {
        fprintf(stderr, "usage: lifecycle early|fork|exec|stress\n");
        return 2;
    }
    /* As before exec: stacks are symbolized from the live process's maps,
     * so a program that exits within a drain period of its last new stack
     * may leave frames unnamed (see README, limitations). */
    usleep(50 * 1000);
    return status;
}
