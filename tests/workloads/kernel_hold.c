/*
 * kernel_hold.c - makes the kernel allocate and hold a known number of
 * objects for it, then let go: the `--kernel` tests' workload.
 *
 * Usage: kernel_hold N. Protocol: stdout "ready <pid>"; on the first stdin
 * line, opens N UDP sockets (each: a sock_inode_cache object from
 * sock_alloc_inode, a UDP sock from sk_prot_alloc, a filp from
 * alloc_empty_file) and prints "done"; on the second, closes them all and
 * prints "closed"; exits when stdin closes.
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 100;
    int *fds = calloc(count, sizeof *fds);
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    if (!fds || !fgets(line, sizeof line, stdin))
        return 1;
    for (int i = 0; i < count; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        if (fds[i] < 0) {
            perror("socket");
            return 1;
        }
    }
    printf("done\n");
    if (!fgets(line, sizeof line, stdin))
        return 0;
    for (int i = 0; i < count; i++)
        close(fds[i]);
    printf("closed\n");
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
