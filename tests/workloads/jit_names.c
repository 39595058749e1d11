/* JIT-like code whose perf map names are markup, for the HTML report's test
 * that names from files a traced process controls stay text.
 *
 * `jit_names` maps two small functions into anonymous executable memory
 * (as a JIT compiler would), names them in /tmp/perf-PID.map, and calls
 * each: the first allocates and keeps JIT_BLOCKS blocks of FIRST_SIZE bytes,
 * the second of SECOND_SIZE bytes. It then sleeps a second (so the tracer
 * names the stacks while the process lives), removes its perf map and exits.
 * KEEP IN SYNC with tests/html.rs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define JIT_BLOCKS 8
#define FIRST_SIZE 3000
#define SECOND_SIZE 5000
static const char *FIRST_NAME = "<img src=x onerror=window.__pwned=1>";
static const char *SECOND_NAME = "</script><script>window.__pwned=2</script><!--";

typedef void *(*jit_fn)(void);

/* push rbp; mov rbp,rsp; mov edi,SIZE; movabs rax,malloc; call rax;
 * pop rbp; ret: malloc(SIZE) with a frame pointer, like JIT code built
 * with them. */
static void emit(unsigned char *code, uint32_t size)
{
    unsigned char prologue[] = {0x55, 0x48, 0x89, 0xe5, 0xbf};
    unsigned char movabs[] = {0x48, 0xb8};
    unsigned char tail[] = {0xff, 0xd0, 0x5d, 0xc3};
    void *target = (void *)malloc;
    size_t at = 0;
    memcpy(code + at, prologue, sizeof prologue), at += sizeof prologue;
    memcpy(code + at, &size, 4), at += 4;
    memcpy(code + at, movabs, sizeof movabs), at += sizeof movabs;
    memcpy(code + at, &target, 8), at += 8;
    memcpy(code + at, tail, sizeof tail);
}

int main(void)
{
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *code = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    emit(code, FIRST_SIZE);
    emit(code + 64, SECOND_SIZE);
    if (mprotect(code, page, PROT_READ | PROT_EXEC) != 0) {
        perror("mprotect");
        return 1;
    }
    char map_path[64];
    snprintf(map_path, sizeof map_path, "/tmp/perf-%d.map", getpid());
    FILE *map = fopen(map_path, "w");
    if (!map) {
        perror(map_path);
        return 1;
    }
    fprintf(map, "%lx 40 %s\n", (unsigned long)code, FIRST_NAME);
    fprintf(map, "%lx 40 %s\n", (unsigned long)(code + 64), SECOND_NAME);
    fclose(map);

    void *kept[2 * JIT_BLOCKS];
    for (int i = 0; i < JIT_BLOCKS; i++) {
        kept[2 * i] = ((jit_fn)code)();
        kept[2 * i + 1] = ((jit_fn)(code + 64))();
    }
    sleep(1);
    unlink(map_path);
    printf("kept %p\n", (void *)kept);
    return 0;
}
