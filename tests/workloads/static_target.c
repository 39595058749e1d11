/*
 * static_target.c - built with -static: a process without a shared libc.
 * alloctrace must refuse to trace it with a one-line error.
 * Protocol: prints "ready <pid>\n", then waits for stdin EOF.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
    char line[64];
    void *volatile p = malloc(100);
    (void)p;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL)
        ;
    return 0;
}
