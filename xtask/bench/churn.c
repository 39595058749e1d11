/*
 * churn: the malloc/free workload of `cargo xtask bench`.
 *
 * Usage: churn THREADS SECONDS [mmap]
 *
 * Each thread keeps 64 slots of live blocks and, in a deterministic (seeded
 * xorshift) sequence, picks a slot, frees the block in it if any, and mallocs
 * a new one of 16..1040 bytes: the small-allocation churn of a busy service.
 * With `mmap`, each pair is instead an anonymous private mmap of 64 KiB and
 * its munmap (untouched: the system calls alone, the cost tracing adds to),
 * after WARMUP_PAIRS untimed ones (the first calls of a process pay for its
 * first page-table pages and the kernel's caches of VMAs and maple-tree
 * nodes). `cargo xtask bench` runs it with one thread: see there why.
 *
 * Protocol, so a tracer can attach before anything is measured:
 *   1. print `ready <pid>` on stdout;
 *   2. wait for a line on stdin;
 *   3. all threads churn for SECONDS (checking the clock every BATCH pairs);
 *   4. print `ns_per_pair <mean over threads of thread CPU time / pairs>`,
 *      then `wall_ns_per_pair <the same with wall-clock time>`;
 *   5. free everything and exit 0.
 *
 * Build: cc -O2 -g -fno-omit-frame-pointer -pthread -o churn churn.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 64
#define MIN_SIZE 16
#define MAX_SIZE 1040
#define BATCH 256
#define MAX_THREADS 256
#define MAP_BYTES (64 * 1024)
#define WARMUP_PAIRS 1000

/* `mmap` on the command line: map/unmap pairs instead of malloc/free. */
static int map_pairs;

struct worker {
    pthread_t thread;
    int index;
    double seconds;
    pthread_barrier_t *start;
    uint64_t pairs;
    uint64_t elapsed_ns;
    uint64_t cpu_ns;
};

/* Every block gets a byte written through this, so the compiler cannot
 * prove a malloc/free pair unused and remove it. */
static volatile unsigned char sink;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The calling thread's CPU time, user and kernel: a uprobe's trap and its
 * programs run in the thread's context, so this is what tracing costs the
 * target, whatever else competes for the CPUs (the tracer itself, builds on
 * a shared machine), which wall-clock time would add in. */
static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift64(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static void map_pair(void)
{
    void *map = mmap(NULL, MAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        perror("churn: mmap");
        exit(1);
    }
    munmap(map, MAP_BYTES);
}

static void *churn(void *arg)
{
    struct worker *w = arg;
    unsigned char *slots[SLOTS] = {0};
    uint64_t state = 0x9E3779B97F4A7C15ull * (uint64_t)(w->index + 1);
    uint64_t pairs = 0;

    for (int i = 0; i < WARMUP_PAIRS && map_pairs; i++)
        map_pair();
    pthread_barrier_wait(w->start);
    uint64_t start = now_ns();
    uint64_t cpu_start = thread_cpu_ns();
    uint64_t deadline = start + (uint64_t)(w->seconds * 1e9);
    uint64_t end;
    do {
        for (int i = 0; i < BATCH && map_pairs; i++)
            map_pair();
        for (int i = 0; i < BATCH && !map_pairs; i++) {
            uint64_t r = xorshift64(&state);
            unsigned slot = r % SLOTS;
            size_t size = MIN_SIZE + (r >> 32) % (MAX_SIZE - MIN_SIZE + 1);
            free(slots[slot]);
            unsigned char *block = malloc(size);
            if (!block) {
                perror("churn: malloc");
                exit(1);
            }
            block[0] = (unsigned char)r;
            sink = block[0];
            slots[slot] = block;
        }
        pairs += BATCH;
        end = now_ns();
    } while (end < deadline);

    w->pairs = pairs;
    w->elapsed_ns = end - start;
    w->cpu_ns = thread_cpu_ns() - cpu_start;
    for (int i = 0; i < SLOTS; i++)
        free(slots[i]);
    return NULL;
}

static int parse_args(int argc, char **argv, int *threads, double *seconds)
{
    char *end;
    if (argc == 4 && strcmp(argv[3], "mmap") == 0)
        map_pairs = 1;
    else if (argc != 3)
        return -1;
    long t = strtol(argv[1], &end, 10);
    if (*end || t < 1 || t > MAX_THREADS)
        return -1;
    double s = strtod(argv[2], &end);
    if (*end || !(s > 0))
        return -1;
    *threads = (int)t;
    *seconds = s;
    return 0;
}

int main(int argc, char **argv)
{
    int threads;
    double seconds;
    if (parse_args(argc, argv, &threads, &seconds) != 0) {
        fprintf(stderr, "usage: %s THREADS(1..%d) SECONDS [mmap]\n", argv[0], MAX_THREADS);
        return 2;
    }

    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "churn: stdin closed before the go line\n");
        return 1;
    }

    static struct worker workers[MAX_THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        workers[i] = (struct worker){.index = i, .seconds = seconds, .start = &start};
        int err = pthread_create(&workers[i].thread, NULL, churn, &workers[i]);
        if (err) {
            fprintf(stderr, "churn: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }

    double ns_per_pair = 0, wall_ns_per_pair = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(workers[i].thread, NULL);
        ns_per_pair += (double)workers[i].cpu_ns / (double)workers[i].pairs;
        wall_ns_per_pair += (double)workers[i].elapsed_ns / (double)workers[i].pairs;
    }
    pthread_barrier_destroy(&start);

    printf("ns_per_pair %.2f\n", ns_per_pair / threads);
    printf("wall_ns_per_pair %.2f\n", wall_ns_per_pair / threads);
    fflush(stdout);
    return 0;
}
