/* forker.c - `forker PROGRAM COUNT`: prints `ready <pid>`, waits for `go`,
 * then COUNT times forks a child that at once execs PROGRAM (with a malloc
 * before the fork, so it is traced), and prints `done <failures>`: how many
 * children did not exit 0. Waits for stdin to close. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

void *volatile sink;

int main(int argc, char **argv)
{
    char line[64];
    int count = argc > 2 ? atoi(argv[2]) : 100, failures = 0;
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    for (int i = 0; i < count; i++) {
        sink = malloc(100);
        free(sink);
        pid_t child = fork();
        if (child == 0) {
            execl(argv[1], argv[1], (char *)NULL);
            _exit(127);
        }
        int status = 0;
        waitpid(child, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failures++;
    }
    printf("done %d\n", failures);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
