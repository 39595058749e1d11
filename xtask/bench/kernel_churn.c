/*
 * kernel_churn: the kernel workload of `cargo xtask bench`, for `--kernel`.
 *
 * Usage: kernel_churn SECONDS
 *
 * Each operation makes the kernel allocate and free hard: it creates a
 * file in a tmpfs directory (/dev/shm), writes 64 bytes to it, closes and
 * unlinks it (an inode, a dentry, a file, a page), then opens a TCP
 * connection on loopback to its own listener, accepts it, sends 64 bytes
 * across and closes both ends (two socks and their inodes and files, skbs;
 * the client resets, so no TIME_WAIT socket piles up).
 *
 * Protocol: print `ready <pid>`; wait for a line on stdin; run for SECONDS;
 * print `ns_per_op <process CPU time (user + system) per operation>` and
 * `wall_ns_per_op <the same in wall-clock time>`; exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void file_op(const char *dir, long i)
{
    char path[256], data[64] = {0};
    snprintf(path, sizeof path, "%s/f%ld", dir, i);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (fd < 0)
        die("open");
    if (write(fd, data, sizeof data) != sizeof data)
        die("write");
    close(fd);
    if (unlink(path) != 0)
        die("unlink");
}

static void socket_op(int listener, const struct sockaddr_in *addr)
{
    char data[64] = {0};
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0)
        die("socket");
    if (connect(client, (const struct sockaddr *)addr, sizeof *addr) != 0)
        die("connect");
    int server = accept(listener, NULL, NULL);
    if (server < 0)
        die("accept");
    if (send(client, data, sizeof data, 0) != sizeof data)
        die("send");
    if (recv(server, data, sizeof data, MSG_WAITALL) != sizeof data)
        die("recv");
    struct linger reset = {1, 0};
    setsockopt(client, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    close(client);
    close(server);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 0;
    if (!(seconds > 0)) {
        fprintf(stderr, "usage: %s SECONDS\n", argv[0]);
        return 2;
    }
    char dir[] = "/dev/shm/kernel_churn.XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp");
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(listener, 128) != 0 || getsockname(listener, (struct sockaddr *)&addr, &len) != 0)
        die("listener");
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", (int)getpid());
    char line[64];
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "kernel_churn: stdin closed before the go line\n");
        return 1;
    }
    double wall_start = now_ns(CLOCK_MONOTONIC), cpu_start = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    double deadline = wall_start + seconds * 1e9;
    long ops = 0;
    while (now_ns(CLOCK_MONOTONIC) < deadline) {
        for (int i = 0; i < BATCH; i++, ops++) {
            file_op(dir, ops);
            socket_op(listener, &addr);
        }
    }
    double cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
    double wall = now_ns(CLOCK_MONOTONIC) - wall_start;
    printf("ns_per_op %.1f\n", cpu / ops);
    printf("wall_ns_per_op %.1f\n", wall / ops);
    close(listener);
    rmdir(dir);
    return 0;
}
