/*
 * probe_holder.c - plays "another tool" holding a uprobe on this process's
 * libc malloc with a USDT semaphore (ref_ctr_offset), so the kernel refuses
 * alloctrace's probe at the same place until it lets go.
 *
 * Usage: probe_holder SECONDS — prints "holding" once the probe is
 * registered, keeps it SECONDS, then exits.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The mapping of `addr` in /proc/self/maps: its file and file offset. */
static int file_offset_of(void *addr, char *path, size_t path_len, uint64_t *offset)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long start, end, file_off;
        char file[256] = "";
        if (sscanf(line, "%lx-%lx %*s %lx %*s %*s %255s", &start, &end, &file_off, file) < 3)
            continue;
        if ((uintptr_t)addr >= start && (uintptr_t)addr < end && file[0] == '/') {
            snprintf(path, path_len, "%s", file);
            *offset = (uintptr_t)addr - start + file_off;
            fclose(maps);
            return 0;
        }
    }
    if (maps)
        fclose(maps);
    return -1;
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 5;
    char path[256], type_text[32];
    uint64_t offset;
    if (file_offset_of(dlsym(RTLD_DEFAULT, "malloc"), path, sizeof path, &offset) != 0) {
        fprintf(stderr, "probe_holder: malloc not found in /proc/self/maps\n");
        return 1;
    }
    FILE *type_file = fopen("/sys/bus/event_source/devices/uprobe/type", "r");
    if (!type_file || !fgets(type_text, sizeof type_text, type_file)) {
        fprintf(stderr, "probe_holder: no uprobe PMU\n");
        return 1;
    }
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = (uint32_t)atoi(type_text);
    /* PERF_UPROBE_REF_CTR_OFFSET_SHIFT is 32. */
    attr.config = (uint64_t)6 << 32;
    attr.config1 = (uint64_t)(uintptr_t)path;
    attr.config2 = offset;
    int fd = (int)syscall(SYS_perf_event_open, &attr, getpid(), -1, -1, 0);
    if (fd < 0) {
        perror("probe_holder: perf_event_open");
        return 1;
    }
    printf("holding %s+%#lx\n", path, (unsigned long)offset);
    fflush(stdout);
    sleep((unsigned)seconds);
    close(fd);
    return 0;
}
