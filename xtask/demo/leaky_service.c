/*
 * leaky_service: a tiny fake request handler used by `cargo xtask demo`.
 *
 * WORKERS threads each handle one request every REQUEST_INTERVAL_MS
 * (~60 requests/s, ~400 allocations/s). Most memory is freed again
 * (malloc, calloc, realloc, aligned_alloc churn), but three call chains leak
 * steadily and deterministically:
 *
 *   1. session_cache_get -> session_create: a session cache that never evicts;
 *      a new user (and a 256-byte session) every SESSION_EVERY requests.
 *   2. handle_request -> read_payload: the 2048-byte payload buffer is not
 *      freed when validate_payload rejects a request (every REJECT_EVERY).
 *   3. handle_request -> audit_log_append: a 128-byte calloc'ed audit entry
 *      every AUDIT_EVERY requests, appended to a list nobody trims.
 *
 * Usage: leaky_service [MAX_SECONDS]   (runs until SIGTERM/SIGINT, or for
 * MAX_SECONDS if given). On exit it prints what it leaked since it started.
 *
 * Build: cc -O1 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -pthread
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 3
#define REQUEST_INTERVAL_MS 50
#define SESSION_EVERY 8
#define REJECT_EVERY 25
#define AUDIT_EVERY 10
#define PAYLOAD_SIZE 2048

/* Keep every function a real frame so stacks read like the source. */
#define HANDLER __attribute__((noinline))

struct request {
    unsigned long id;
    int worker;
    unsigned long user_id;
    char path[64];
};

struct session {
    struct session *next;
    unsigned long user_id;
    unsigned long created_by_request;
    char user[32];
    char token[64];
    unsigned char scratch[256 - 2 * sizeof(unsigned long) - sizeof(void *) - 96];
};

struct audit_entry {
    struct audit_entry *next;
    char line[128 - sizeof(void *)];
};

static unsigned long next_request_id;
static volatile sig_atomic_t stopping;

static pthread_mutex_t session_lock = PTHREAD_MUTEX_INITIALIZER;
static struct session *session_cache; /* never evicted: leak 1 */
static unsigned long sessions_created;

static pthread_mutex_t audit_lock = PTHREAD_MUTEX_INITIALIZER;
static struct audit_entry *audit_log; /* never trimmed: leak 3 */
static unsigned long audit_entries;

static unsigned long requests_rejected; /* each one leaks a payload: leak 2 */
static unsigned long requests_handled;

HANDLER static struct request *parse_request(unsigned long id, int worker)
{
    struct request *req = malloc(sizeof(*req));
    if (!req)
        abort();
    req->id = id;
    req->worker = worker;
    req->user_id = id / SESSION_EVERY; /* a new user every SESSION_EVERY requests */
    snprintf(req->path, sizeof(req->path), "/api/v1/items/%lu", id % 1000);
    return req;
}

HANDLER static char *read_payload(const struct request *req)
{
    char *payload = malloc(PAYLOAD_SIZE);
    if (!payload)
        abort();
    int n = snprintf(payload, PAYLOAD_SIZE, "{\"request\":%lu,\"path\":\"%s\",\"body\":\"",
                     req->id, req->path);
    memset(payload + n, 'x', PAYLOAD_SIZE - n - 3);
    strcpy(payload + PAYLOAD_SIZE - 3, "\"}");
    return payload;
}

HANDLER static int validate_payload(const struct request *req, const char *payload)
{
    (void)payload;
    return req->id % REJECT_EVERY != 0; /* deterministic "bad request" */
}

HANDLER static struct session *session_create(const struct request *req)
{
    struct session *s = malloc(sizeof(*s));
    if (!s)
        abort();
    memset(s, 0, sizeof(*s));
    s->user_id = req->user_id;
    s->created_by_request = req->id;
    snprintf(s->user, sizeof(s->user), "user-%lu", req->user_id);
    snprintf(s->token, sizeof(s->token), "tok-%016lx", req->user_id * 0x9e3779b97f4a7c15UL);
    return s;
}

/* Look the user up in the cache, creating a session on a miss. Sessions are
 * never evicted, so every new user costs sizeof(struct session) forever. */
HANDLER static struct session *session_cache_get(const struct request *req)
{
    pthread_mutex_lock(&session_lock);
    struct session *s = session_cache;
    /* Users are mostly recent: only look at the newest few entries. */
    for (int i = 0; s && i < 16; s = s->next, i++)
        if (s->user_id == req->user_id)
            break;
    if (!s || s->user_id != req->user_id) {
        s = session_create(req);
        s->next = session_cache;
        session_cache = s;
        sessions_created++;
    }
    pthread_mutex_unlock(&session_lock);
    return s;
}

HANDLER static char *compute_etag(const char *payload)
{
    unsigned char *scratch = aligned_alloc(64, 256);
    if (!scratch)
        abort();
    unsigned long h = 1469598103934665603UL;
    for (const char *p = payload; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211UL;
    memcpy(scratch, &h, sizeof(h));
    char *etag = malloc(24);
    if (!etag)
        abort();
    snprintf(etag, 24, "\"%016lx\"", *(unsigned long *)scratch);
    free(scratch);
    return etag;
}

/* Build the response in a buffer that grows with realloc, like a string builder. */
HANDLER static char *build_response(const struct request *req, const struct session *s,
                                    const char *payload)
{
    size_t cap = 64, len = 0;
    char *out = realloc(NULL, cap);
    if (!out)
        abort();
    char *etag = compute_etag(payload);
    const char *parts[] = {"HTTP/1.1 200 OK\r\n", "Content-Type: application/json\r\n",
                           "ETag: ", etag, "\r\nX-User: ", s->user, "\r\nX-Path: ",
                           req->path, "\r\n\r\n{\"ok\":true}"};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        size_t n = strlen(parts[i]);
        while (len + n + 1 > cap) {
            cap *= 2;
            out = realloc(out, cap);
            if (!out)
                abort();
        }
        memcpy(out + len, parts[i], n + 1);
        len += n;
    }
    free(etag);
    return out;
}

HANDLER static void audit_log_append(const struct request *req)
{
    struct audit_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    snprintf(e->line, sizeof(e->line), "request %lu worker %d GET %s", req->id, req->worker,
             req->path);
    pthread_mutex_lock(&audit_lock);
    e->next = audit_log;
    audit_log = e;
    audit_entries++;
    pthread_mutex_unlock(&audit_lock);
}

HANDLER static void send_response(const char *response)
{
    /* A real service would write() to a socket; keep the data "used". */
    __asm__ volatile("" : : "r"(response) : "memory");
}

HANDLER static void handle_request(unsigned long id, int worker)
{
    struct request *req = parse_request(id, worker);
    char *payload = read_payload(req);

    if (!validate_payload(req, payload)) {
        /* BUG: early return on the error path forgets to free payload. */
        __atomic_fetch_add(&requests_rejected, 1, __ATOMIC_RELAXED);
        free(req);
        return;
    }

    struct session *s = session_cache_get(req);
    char *response = build_response(req, s, payload);
    send_response(response);
    if (req->id % AUDIT_EVERY == 0)
        audit_log_append(req);

    free(response);
    free(payload);
    free(req);
    __atomic_fetch_add(&requests_handled, 1, __ATOMIC_RELAXED);
}

HANDLER static void *worker_main(void *arg)
{
    int worker = (int)(long)arg;
    struct timespec pause = {0, REQUEST_INTERVAL_MS * 1000000L};
    while (!stopping) {
        unsigned long id = __atomic_add_fetch(&next_request_id, 1, __ATOMIC_RELAXED);
        handle_request(id, worker);
        nanosleep(&pause, NULL);
    }
    return NULL;
}

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv)
{
    long max_seconds = argc > 1 ? strtol(argv[1], NULL, 10) : 0;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    pthread_t threads[WORKERS];
    for (long i = 0; i < WORKERS; i++)
        if (pthread_create(&threads[i], NULL, worker_main, (void *)i) != 0) {
            perror("leaky_service: pthread_create");
            return 1;
        }
    fprintf(stderr, "leaky_service: pid %d serving with %d workers (~%d requests/s)\n",
            (int)getpid(), WORKERS, WORKERS * 1000 / REQUEST_INTERVAL_MS);

    time_t start = time(NULL);
    while (!stopping && (max_seconds <= 0 || time(NULL) - start < max_seconds))
        sleep(1);
    stopping = 1;
    for (int i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);

    unsigned long rejected = __atomic_load_n(&requests_rejected, __ATOMIC_RELAXED);
    fprintf(stderr,
            "leaky_service: stopped after %lu requests; leaked since start: "
            "%lu sessions x %zu B (session_create), %lu payloads x %d B (read_payload), "
            "%lu audit entries x %zu B (audit_log_append)\n",
            __atomic_load_n(&requests_handled, __ATOMIC_RELAXED) + rejected, sessions_created,
            sizeof(struct session), rejected, PAYLOAD_SIZE, audit_entries,
            sizeof(struct audit_entry));
    return 0;
}
