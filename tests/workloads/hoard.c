/* hoard.c - `hoard COUNT`: prints `ready <pid>`, waits for `go`, then
 * allocates COUNT blocks of 16 bytes from one site and keeps them all,
 * prints `done`, and waits for stdin to close. A target whose outstanding
 * blocks outgrow what a tracer held to a small memory limit can track. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char line[64];
    long count = argc > 1 ? atol(argv[1]) : 1000000;
    void **blocks = calloc(count, sizeof *blocks); /* before `ready`: untraced */
    if (!blocks)
        return 2;
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    for (long i = 0; i < count; i++)
        blocks[i] = malloc(16);
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
