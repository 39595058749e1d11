/* jitter.c - allocates from code it generates at run time, as a JIT does.
 * Prints `ready <pid>` and `jit <address> <size>` (the generated function,
 * for a perf map), waits for `go`, then the generated function calls
 * malloc(777) 4 times (kept), prints `done`, and waits for stdin to close.
 * The generated code keeps frame pointers: push rbp; mov rbp, rsp;
 * mov edi, 777; mov rax, malloc; call rax; pop rbp; ret. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void *volatile kept[4];

int main(void)
{
    unsigned char code[] = {
        0x55,                         /* push rbp */
        0x48, 0x89, 0xe5,             /* mov rbp, rsp */
        0xbf, 0x09, 0x03, 0x00, 0x00, /* mov edi, 777 */
        0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, /* mov rax, imm64 */
        0xff, 0xd0,                   /* call rax */
        0x5d,                         /* pop rbp */
        0xc3,                         /* ret */
    };
    void *(*target)(size_t) = malloc;
    memcpy(code + 11, &target, sizeof target);
    unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return 1;
    memcpy(page, code, sizeof code);
    void *(*jitted)(void) = (void *(*)(void))page;
    char line[64];
    printf("ready %d\n", getpid());
    printf("jit %lx %zx\n", (unsigned long)page, sizeof code);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    for (int i = 0; i < 4; i++)
        kept[i] = jitted();
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
