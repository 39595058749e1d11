/*
 * static_target.c - built with -static: a process without a shared libc,
 * whose allocator is the static glibc inside its own executable.
 *
 * Protocol: prints "ready <pid>\n"; on each "go" line performs the
 * allocations of site_static and prints "done"; exits on stdin EOF.
 * KEEP IN SYNC with STATIC_SITE in tests/support/lib.rs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *volatile sink[64];
static int sink_next;

/* 3 x 555 B per "go" */
__attribute__((noinline)) void site_static(void)
{
    for (int i = 0; i < 3; i++)
        sink[sink_next++ % 64] = malloc(555);
}

int main(void)
{
    char line[64];
    void *volatile p = malloc(100);
    (void)p;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strncmp(line, "go", 2) == 0) {
            site_static();
            printf("done\n");
            fflush(stdout);
        }
    }
    return 0;
}
