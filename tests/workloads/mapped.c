// mapped.c - a workload that holds memory through mmap, for the mapped
// memory tests (tests/mapped.rs). Each function below is the caller of the
// mmap that the report must name, and holds a known number of bytes:
//
//   leak_mmap       10 mappings of 256 KiB, kept
//   pool_pieces     a 64-page slab unmapped page by page but for 3 pages
//   reserve_commit  a 64 MiB PROT_NONE reservation, 1 MiB committed by
//                   mprotect, then all but 256 KiB given back
//   map_base        16 pages, 4 of which fixed_over maps over (MAP_FIXED)
//   remap_grow      4 pages grown to 32 by mremap (it may move)
//   transient       100 mappings made and unmapped
//   big_mallocs     4 malloc'd blocks of 1 MiB: glibc maps each itself,
//                   and they must count once, as heap blocks
//   map_file        a private file mapping: not counted
//   arena_mallocs   64 blocks of 16 KiB from glibc's main arena, twice
//                   (before and after grow_break): glibc grows the break
//                   for them inside malloc, and they must count once, as
//                   heap blocks
//   grow_break      a custom allocator's break: brk() 40 pages up, then 16
//                   back down; it holds 24 pages
//
// With the argument `sbrk`, only sbrk_pool runs: sbrk() 16 pages up, then
// 4 back; it holds 12 pages (glibc's sbrk keeps the old break in rbp, so
// only the DWARF unwinder walks past it).
//
// With the argument `more`, only these cases run instead:
//   dontunmap_source  16 pages, moved away by keep_move; the old range stays
//                     mapped (and charged), and gives 6 pages back: 10
//   keep_move         the 16 pages moved (MREMAP_DONTUNMAP), 4 given back: 12
//   part_source       8 pages, 2 of which part_move moves: still 8
//   part_move         the 2 pages moved out of the middle of part_source's
//   reserve_move      a 16-page reservation moved, 4 pages of it then
//                     committed by mprotect: 4
//   file_move         a private file mapping moved: not counted
//   move_grow         4 pages grown to 16 by mremap, which must move them
//                     (the page after them is mapped, PROT_NONE): 16
//   fixed_commit      10 pages committed in a 64-page reservation by mmap
//                     with MAP_FIXED (reserve_fixed's reservation: 0): 10
//   advise_dontneed   8 pages, 4 of them madvise(MADV_DONTNEED)'d: still 8
//   shared_map        8 shared anonymous pages: not counted
//   arena_thread      a thread that mallocs 4 blocks of 16 KiB from the
//                     arena glibc reserves for it (inside malloc: heap
//                     blocks only)
//   spawn_arena_thread  started it, with a 256 KiB stack, which glibc maps
//                     (inside pthread_create, with a PROT_NONE guard page
//                     beyond it) and keeps cached once the thread is joined:
//                     64
// 134 pages in all.
//
// Protocol: stdout "ready <pid>"; on the first stdin line, do the above
// and print "done"; exit when stdin closes. With a second argument `now`
// (a program launched under the tracer), without waiting for stdin.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define PAGE 4096UL

static void *anon(size_t len, int prot, int flags) {
    void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

/* The mmap calls are in each named function, not in `anon`, so that the
 * named function is the first frame of its stack. */
#define ANON(len, prot, flags) \
    mmap(NULL, (len), (prot), MAP_PRIVATE | MAP_ANONYMOUS | (flags), -1, 0)
/* An accessible mapping at `at`, over whatever was there. */
#define FIXED(at, len) \
    mmap((at), (len), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)

static void *kept[64];
static int nkept;

static void keep(void *p) {
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    kept[nkept++] = p;
}

NOINLINE void leak_mmap(void) {
    for (int i = 0; i < 10; i++) {
        char *p = ANON(256 * 1024, PROT_READ | PROT_WRITE, 0);
        keep(p);
        p[0] = 1;
    }
}

NOINLINE void pool_pieces(void) {
    char *slab = ANON(64 * PAGE, PROT_READ | PROT_WRITE, 0);
    keep(slab);
    for (unsigned long page = 0; page < 64; page++) {
        if (page != 3 && page != 7 && page != 8) {
            munmap(slab + page * PAGE, PAGE);
        }
    }
}

NOINLINE void reserve_commit(void) {
    char *heap = ANON(64UL << 20, PROT_NONE, MAP_NORESERVE);
    keep(heap);
    mprotect(heap, 1 << 20, PROT_READ | PROT_WRITE);
    memset(heap, 1, 1 << 20);
    mprotect(heap + 256 * 1024, (1 << 20) - 256 * 1024, PROT_NONE);
}

NOINLINE void fixed_over(char *base) { keep(FIXED(base + 4 * PAGE, 4 * PAGE)); }

NOINLINE void map_base(void) {
    char *base = ANON(16 * PAGE, PROT_READ | PROT_WRITE, 0);
    keep(base);
    fixed_over(base);
}

NOINLINE void remap_grow(void) {
    char *p = ANON(4 * PAGE, PROT_READ | PROT_WRITE, 0);
    keep(p);
    keep(mremap(p, 4 * PAGE, 32 * PAGE, MREMAP_MAYMOVE));
}

NOINLINE void transient(void) {
    for (int i = 0; i < 100; i++) {
        char *p = ANON(64 * 1024, PROT_READ | PROT_WRITE, 0);
        if (p == MAP_FAILED) {
            exit(1);
        }
        p[0] = 1;
        munmap(p, 64 * 1024);
    }
}

/* volatile: the compiler may otherwise drop a malloc whose block is only
 * stored into memory it can prove nothing reads. */
static char *volatile held_blocks[4];

NOINLINE void big_mallocs(void) {
    for (int i = 0; i < 4; i++) {
        char *p = malloc(1 << 20);
        p[0] = 1;
        held_blocks[i] = p;
    }
}

NOINLINE void map_file(void) {
    int fd = open("/proc/self/exe", O_RDONLY);
    if (fd < 0) {
        exit(1);
    }
    keep(mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0));
    close(fd);
}

/* volatile, as above. */
static char *volatile arena_blocks[128];
static int narena;

NOINLINE void arena_mallocs(void) {
    for (int i = 0; i < 64; i++) {
        char *p = malloc(16 * 1024);
        p[0] = 1;
        arena_blocks[narena++] = p;
    }
}

NOINLINE void grow_break(void) {
    char *start = sbrk(0);
    if (brk(start + 40 * PAGE) != 0 || brk(start + 24 * PAGE) != 0) {
        perror("brk");
        exit(1);
    }
    memset(start, 1, 24 * PAGE);
}

NOINLINE void sbrk_pool(void) {
    char *start = sbrk(16 * PAGE);
    if (start == (void *)-1 || sbrk(-4 * (long)PAGE) == (void *)-1) {
        perror("sbrk");
        exit(1);
    }
    memset(start, 1, 12 * PAGE);
}

static char *moved(char *old, size_t len) {
    char *p = mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL);
    if (p == MAP_FAILED) {
        perror("mremap");
        exit(1);
    }
    return p;
}

/* The mremap calls are in each named function, as the mmap calls are. */
#define KEEP_MOVING(old, len) \
    mremap((old), (len), (len), MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL)

NOINLINE char *dontunmap_source(void) {
    char *p = ANON(16 * PAGE, PROT_READ | PROT_WRITE, 0);
    keep(p);
    memset(p, 1, 16 * PAGE);
    return p;
}

NOINLINE void keep_move(char *old) {
    char *p = KEEP_MOVING(old, 16 * PAGE);
    keep(p);
    /* The pages moved; the old range reads as zero-fill. */
    if (p[0] != 1 || old[0] != 0) {
        fprintf(stderr, "mremap: pages did not move\n");
        exit(1);
    }
    munmap(old, 6 * PAGE);
    munmap(p + 12 * PAGE, 4 * PAGE);
}

NOINLINE char *part_source(void) {
    char *p = ANON(8 * PAGE, PROT_READ | PROT_WRITE, 0);
    keep(p);
    return p;
}

NOINLINE void part_move(char *old) { keep(KEEP_MOVING(old + 2 * PAGE, 2 * PAGE)); }

NOINLINE void reserve_move(void) {
    char *r = ANON(16 * PAGE, PROT_NONE, MAP_NORESERVE);
    keep(r);
    char *p = KEEP_MOVING(r, 16 * PAGE);
    keep(p);
    mprotect(p, 4 * PAGE, PROT_READ | PROT_WRITE);
}

NOINLINE void file_move(void) {
    int fd = open("/proc/self/exe", O_RDONLY);
    if (fd < 0) {
        exit(1);
    }
    char *p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    keep(p);
    keep(moved(p, PAGE));
}

NOINLINE void move_grow(void) {
    char *p = ANON(5 * PAGE, PROT_READ | PROT_WRITE, 0);
    keep(p);
    mprotect(p + 4 * PAGE, PAGE, PROT_NONE);
    char *q = mremap(p, 4 * PAGE, 16 * PAGE, MREMAP_MAYMOVE);
    if (q == MAP_FAILED || q == p) {
        fprintf(stderr, "mremap: did not move\n");
        exit(1);
    }
    keep(q);
}

NOINLINE char *reserve_fixed(void) {
    char *r = ANON(64 * PAGE, PROT_NONE, MAP_NORESERVE);
    keep(r);
    return r;
}

NOINLINE void fixed_commit(char *reservation) { keep(FIXED(reservation + 8 * PAGE, 10 * PAGE)); }

NOINLINE void advise_dontneed(void) {
    char *p = ANON(8 * PAGE, PROT_READ | PROT_WRITE, 0);
    keep(p);
    memset(p, 1, 8 * PAGE);
    madvise(p, 4 * PAGE, MADV_DONTNEED);
}

NOINLINE void shared_map(void) {
    char *p = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    keep(p);
    memset(p, 1, 8 * PAGE);
}

static char *volatile thread_blocks[4];

NOINLINE void *arena_thread(void *unused) {
    (void)unused;
    for (int i = 0; i < 4; i++) {
        thread_blocks[i] = malloc(16 * 1024);
        thread_blocks[i][0] = 1;
    }
    return NULL;
}

NOINLINE void spawn_arena_thread(void) {
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&thread, &attr, arena_thread, NULL) != 0) {
        exit(1);
    }
    pthread_join(thread, NULL);
    pthread_attr_destroy(&attr);
}

static void more_cases(void) {
    keep_move(dontunmap_source());
    part_move(part_source());
    reserve_move();
    file_move();
    move_grow();
    fixed_commit(reserve_fixed());
    advise_dontneed();
    shared_map();
    spawn_arena_thread();
}

int main(int argc, char **argv) {
    (void)anon;
    int sbrk_only = argc > 1 && strcmp(argv[1], "sbrk") == 0;
    int more_only = argc > 1 && strcmp(argv[1], "more") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    char line[64];
    int now = argc > 2 && strcmp(argv[2], "now") == 0;
    if (!now && !fgets(line, sizeof line, stdin)) {
        return 0;
    }
    if (sbrk_only || more_only) {
        if (sbrk_only) {
            sbrk_pool();
        } else {
            more_cases();
        }
        printf("done\n");
        while (fgets(line, sizeof line, stdin)) {
        }
        return 0;
    }
    leak_mmap();
    pool_pieces();
    reserve_commit();
    map_base();
    remap_grow();
    transient();
    big_mallocs();
    map_file();
    arena_mallocs();
    grow_break();
    arena_mallocs();
    printf("done\n");
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
