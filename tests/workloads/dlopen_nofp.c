/*
 * dlopen_nofp.c - loads a library built without frame pointers
 * (chain_nofp.c, path in argv[1]) only when told, so that it is mapped
 * after alloctrace attached, and leaks through the library's chain.
 * Built without frame pointers itself (tests/support/unwinding.rs).
 *
 * Protocol: stdout "ready <pid>"; each "go" on stdin: dlopen the library
 * (the first time), leak one 700 B block through chain_1, print "done".
 * Stays until stdin closes. With "now" after the library's path, the
 * library is loaded before "ready" instead (tests/debuglink.rs).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CALL __attribute__((noinline, noclone))

static long (*chain_1)(int);

CALL long call_library(int n)
{
    return chain_1(n) + 1;
}

static int load(const char *path)
{
    void *library = dlopen(path, RTLD_NOW);
    if (library == NULL || (chain_1 = (long (*)(int))dlsym(library, "chain_1")) == NULL) {
        fprintf(stderr, "dlopen_nofp: %s\n", dlerror());
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char line[64];
    long acc = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: dlopen_nofp LIBRARY [now]\n");
        return 2;
    }
    if (argc > 2 && strcmp(argv[2], "now") == 0 && load(argv[1]) != 0)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", (int)getpid());
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strncmp(line, "go", 2) != 0)
            continue;
        if (chain_1 == NULL && load(argv[1]) != 0)
            return 2;
        acc += call_library((int)acc & 7);
        printf("done\n");
    }
    return acc == 42;
}
