/* bench/bench_transport.c — `moerun bench transport` (executable
 * moerun-bench-transport; launch/moerun-bench-transport starts it as 2 MPI
 * ranks with the cluster's UCX environment).
 *
 * Times the two bulk paths of the cluster through transport/tp.h:
 *   put       KV-block shipping: tp_put(size) + tp_flush(rank 1) into a
 *             tp_mem_alloc'd region of rank 1; time per put+flush
 *   put-reg   (--registered) the same into malloc'd memory registered with
 *             tp_mem_register (emulated on posix/sysv shared memory)
 *   dispatch  token dispatch: tp_send(size) of a hidden-state batch to rank 1
 *             and its same-size reply; time per round trip, algbw = 2*size/time
 *   disp-nc   the same with tp_send_nocopy + tp_flush on both sides (no copy of
 *             the payload into a tp-owned buffer) and tp_msg_release
 * With --staged BACKEND (cuda, or devsim to exercise the path without a GPU)
 * the GPU-to-GPU paths of the cluster, staged through host memory because
 * Debian's UCX has no CUDA transport, with their parts alone:
 *   d2h, h2d  backend copy of `size` bytes to / from staging host memory
 *             (pinned on cuda), rank 0 alone
 *   kv-stg    KV shipping: D2H on rank 0, put + flush into rank 1's region
 *             (pinned in place), a small notice, H2D on rank 1, its ack; time
 *             per block end to end
 *   tok-stg   token dispatch: D2H, tp_send, H2D on rank 1, and the same back;
 *             time per round trip, algbw = 2*size/time
 * Their reference ("serial") is the sum of the parts measured in this run
 * (d2h + put + h2d, resp. 2*(d2h + h2d) + dispatch round trip): ratio 1.0
 * means staging adds nothing beyond its copies, > 1 would need overlap.
 * then, in the same UCX environment, ucx_perftest (server + client on
 * 127.0.0.1, error-handling endpoints like ours: -e) for the same size and
 * count: ucp_put_bw for put rows, ucp_am_lat (a same-size ping-pong, whose
 * bandwidth column is size / one-way latency = 2*size/round trip, like ours)
 * for dispatch rows, and prints
 * ratio = ours / perftest. #wrong counts rows whose bytes did not arrive
 * intact (checked after the timed loop). Best of --trials for both sides.
 * GB/s are 1e9 bytes/s (perftest's MB/s are MiB/s and converted).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/args.h"
#include "common/log.h"
#include "common/status.h"
#include "common/timer.h"
#include "kernels/backend.h"
#include "transport/tp.h"

enum { MSG_KEYS = 16, MSG_CHECK, MSG_VERDICT, MSG_ECHO, MSG_ECHO_NC, MSG_QUIT, MSG_KV_NOTE,
       MSG_KV_ACK, MSG_ECHO_STG };
enum { REGION_ALLOC, REGION_REG, REGION_DEV };
#define BT_MAX_SIZES 16
#define BT_MAX_ROWS (8 * BT_MAX_SIZES)

typedef struct bt_opts {
    size_t sizes[BT_MAX_SIZES];
    int n_sizes;
    int count, warmup, trials; /* count/warmup 0: chosen per size */
    bool json, perftest, registered, help;
    const char *perftest_bin;
    const char *staged;      /* backend name for the staged rows, NULL = none */
} bt_opts;

/* One rank's side of the staged rows: the backend, a device buffer and
 * staging host memory of max_size bytes. */
typedef struct bt_stage {
    const mr_kernels *k;
    void *dev, *host;
} bt_stage;

typedef struct bt_row {
    const char *op;
    size_t size;
    int count;
    double time_us, algbw;
    int wrong;
    const char *ref_test;
    double ref_gbs; /* 0: not measured */
} bt_row;

typedef struct {
    uint32_t region;
    uint32_t pad;
    uint64_t size, sum;
} bt_check;

/* ---- helpers ------------------------------------------------------------ */

static uint64_t bt_sum(const uint8_t *p, size_t len)
{
    uint64_t h = 1469598103934665603ull, w;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 1099511628211ull;
    }
    for (; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Busy-poll like perftest does, but sleep (tp_wait) once nothing arrived for
 * 0.2 s, so an idle rank leaves the CPUs to ucx_perftest. */
static tp_msg bt_recv(tp_ctx *ctx, double timeout_s)
{
    tp_msg m;
    double start = mr_now(), deadline = start + timeout_s;
    while (!tp_poll(ctx, &m)) {
        double now = mr_now();
        if (now > deadline) {
            MR_ERROR("bench transport: rank %d got no message in %.0f s", tp_rank(ctx), timeout_s);
            exit(1);
        }
        if (now - start > 0.2) tp_wait(ctx, 0.05);
    }
    if (m.type == TP_MSG_PEER_DEAD) {
        MR_ERROR("bench transport: rank %d died", m.src);
        exit(1);
    }
    return m;
}

static void bt_must(mr_status st, const char *what)
{
    if (st == MR_OK) return;
    MR_ERROR("bench transport: %s: %s (%s)", what, mr_last_error(), mr_status_name(st));
    exit(1);
}

static int bt_auto_count(size_t size)
{
    size_t c = ((size_t)1 << 30) / size; /* ~1 GiB per trial */
    return c < 10 ? 10 : c > 1000 ? 1000 : (int)c;
}

/* ---- rank 1: the target / echo side -------------------------------------- */

static void bt_stage_open(const bt_opts *o, size_t max_size, bt_stage *st)
{
    memset(st, 0, sizeof *st);
    if (!o->staged) return;
    bt_must(mr_backend_open(o->staged, false, &st->k), "--staged");
    st->dev = st->k->alloc(max_size);
    st->host = st->k->host_alloc(max_size);
    if (!st->dev || !st->host) bt_must(MR_ENOMEM, "staged buffers");
    memset(st->host, 0, max_size);
    st->k->copy(st->dev, st->host, max_size, MR_COPY_H2D);
    bt_must(st->k->check(), "staged buffers");
}

static void bt_stage_close(bt_stage *st)
{
    if (!st->k) return;
    st->k->free(st->dev);
    st->k->host_free(st->host);
}

static void bt_serve(tp_ctx *ctx, const bt_opts *o, size_t max_size)
{
    tp_mem *mem_alloc = NULL, *mem_reg = NULL;
    uint8_t *reg = NULL;
    bt_stage stg;
    bt_stage_open(o, max_size, &stg);
    bt_must(tp_mem_alloc(ctx, max_size, &mem_alloc), "tp_mem_alloc");
    memset(tp_mem_base(mem_alloc), 0, max_size);
    bool region_pinned = stg.k && stg.k->host_register(tp_mem_base(mem_alloc), max_size) == MR_OK;
    if (o->registered) {
        reg = calloc(1, max_size);
        if (!reg) bt_must(MR_ENOMEM, "malloc");
        memset(reg, 1, max_size);
        bt_must(tp_mem_register(ctx, reg, max_size, &mem_reg), "tp_mem_register");
    }
    void *k[2] = {NULL, NULL};
    size_t k_len[2] = {0, 0};
    bt_must(tp_mem_pack(ctx, mem_alloc, &k[0], &k_len[0]), "tp_mem_pack");
    if (mem_reg) bt_must(tp_mem_pack(ctx, mem_reg, &k[1], &k_len[1]), "tp_mem_pack");
    uint64_t hdr[2] = {k_len[0], k_len[1]};
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    if (sched_getaffinity(0, sizeof cpus, &cpus) != 0) CPU_ZERO(&cpus);
    uint8_t *blob = malloc(sizeof cpus + sizeof hdr + k_len[0] + k_len[1]);
    memcpy(blob, &cpus, sizeof cpus);
    memcpy(blob + sizeof cpus, hdr, sizeof hdr);
    memcpy(blob + sizeof cpus + sizeof hdr, k[0], k_len[0]);
    if (k_len[1]) memcpy(blob + sizeof cpus + sizeof hdr + k_len[0], k[1], k_len[1]);
    bt_must(tp_send(ctx, 0, MSG_KEYS, blob, sizeof cpus + sizeof hdr + k_len[0] + k_len[1]),
            "send keys");
    free(blob);
    free(k[0]);
    free(k[1]);

    for (;;) {
        tp_msg m = bt_recv(ctx, 600);
        if (m.type == MSG_QUIT) {
            tp_msg_free(&m);
            break;
        }
        if (m.type == MSG_ECHO) {
            bt_must(tp_send(ctx, 0, MSG_ECHO, m.data, m.len), "echo");
            tp_msg_release(ctx, &m); /* the hot-path way: its buffer takes the next message */
            continue;
        }
        if (m.type == MSG_KV_NOTE && m.len == sizeof(uint64_t) && stg.k) {
            uint64_t size;
            memcpy(&size, m.data, sizeof size);
            if (size > max_size) bt_must(MR_EPROTO, "kv note size");
            stg.k->copy(stg.dev, tp_mem_base(mem_alloc), size, MR_COPY_H2D);
            bt_must(tp_send(ctx, 0, MSG_KV_ACK, NULL, 0), "kv ack");
            tp_msg_free(&m);
            continue;
        }
        if (m.type == MSG_ECHO_STG && stg.k && m.len <= max_size) {
            stg.k->copy(stg.dev, m.data, m.len, MR_COPY_H2D);
            stg.k->copy(stg.host, stg.dev, m.len, MR_COPY_D2H);
            bt_must(tp_send(ctx, 0, MSG_ECHO_STG, stg.host, m.len), "staged echo");
            tp_msg_release(ctx, &m);
            continue;
        }
        if (m.type == MSG_ECHO_NC) {
            bt_must(tp_send_nocopy(ctx, 0, MSG_ECHO_NC, m.data, m.len), "echo");
            bt_must(tp_flush(ctx, 0, 60), "tp_flush"); /* m.data is free again */
            tp_msg_release(ctx, &m);
            continue;
        } else if (m.type == MSG_CHECK && m.len == sizeof(bt_check)) {
            bt_check c;
            memcpy(&c, m.data, sizeof c);
            const uint8_t *base = c.region == REGION_REG ? reg : tp_mem_base(mem_alloc);
            if (c.region == REGION_DEV && stg.k && c.size <= max_size) {
                /* what arrived in rank 1's device buffer, read back */
                stg.k->copy(stg.host, stg.dev, c.size, MR_COPY_D2H);
                base = stg.host;
            } else if (c.region == REGION_DEV) {
                base = NULL;
            }
            int32_t wrong = !base || c.size > max_size || bt_sum(base, c.size) != c.sum;
            bt_must(tp_send(ctx, 0, MSG_VERDICT, &wrong, sizeof wrong), "verdict");
        }
        tp_msg_free(&m);
    }
    if (region_pinned) stg.k->host_unregister(tp_mem_base(mem_alloc));
    tp_mem_deregister(ctx, mem_alloc);
    tp_mem_deregister(ctx, mem_reg);
    free(reg);
    bt_stage_close(&stg);
}

/* ---- rank 0: the timed side ---------------------------------------------- */

static int bt_verdict(tp_ctx *ctx, uint32_t region, const uint8_t *src, size_t size)
{
    bt_check c = {.region = region, .size = size, .sum = bt_sum(src, size)};
    bt_must(tp_send(ctx, 1, MSG_CHECK, &c, sizeof c), "check");
    tp_msg m = bt_recv(ctx, 60);
    int32_t wrong = 1;
    if (m.type == MSG_VERDICT && m.len == sizeof wrong) memcpy(&wrong, m.data, sizeof wrong);
    tp_msg_free(&m);
    return wrong;
}

static int bt_warmup(const bt_opts *o, const bt_row *row)
{
    return o->warmup ? o->warmup : row->count / 10 + 2;
}

/* One trial: seconds per put+flush. */
static double bt_time_put(tp_ctx *ctx, const bt_opts *o, tp_rkey *rk, const uint8_t *src,
                          const bt_row *row)
{
    for (int i = 0; i < bt_warmup(o, row); i++) {
        bt_must(tp_put(ctx, 1, rk, 0, src, row->size), "tp_put");
        bt_must(tp_flush(ctx, 1, 60), "tp_flush");
    }
    double t0 = mr_now();
    for (int i = 0; i < row->count; i++) {
        bt_must(tp_put(ctx, 1, rk, 0, src, row->size), "tp_put");
        bt_must(tp_flush(ctx, 1, 60), "tp_flush");
    }
    return (mr_now() - t0) / row->count;
}

/* One dispatch + reply; returns 1 if the reply is not the bytes sent. */
static int bt_round_trip(tp_ctx *ctx, const uint8_t *src, size_t size, bool nocopy, bool verify)
{
    if (nocopy) bt_must(tp_send_nocopy(ctx, 1, MSG_ECHO_NC, src, size), "tp_send_nocopy");
    else bt_must(tp_send(ctx, 1, MSG_ECHO, src, size), "tp_send");
    tp_msg m = bt_recv(ctx, 60);
    if (nocopy) bt_must(tp_flush(ctx, 1, 60), "tp_flush"); /* before src may change */
    int wrong = verify && (m.len != size || memcmp(m.data, src, size) != 0 ||
                           m.type != (nocopy ? MSG_ECHO_NC : MSG_ECHO));
    tp_msg_release(ctx, &m);
    return wrong;
}

/* One trial: seconds per dispatch round trip. */
static double bt_time_dispatch(tp_ctx *ctx, const bt_opts *o, const uint8_t *src, const bt_row *row,
                               bool nocopy)
{
    for (int i = 0; i < bt_warmup(o, row); i++) bt_round_trip(ctx, src, row->size, nocopy, false);
    double t0 = mr_now();
    for (int i = 0; i < row->count; i++) bt_round_trip(ctx, src, row->size, nocopy, false);
    return (mr_now() - t0) / row->count;
}

/* ---- staged (GPU) paths, rank 0 ------------------------------------------- */

static void bt_copy(const bt_stage *stg, size_t size, int dir)
{
    if (dir == MR_COPY_D2H) stg->k->copy(stg->host, stg->dev, size, MR_COPY_D2H);
    else stg->k->copy(stg->dev, stg->host, size, MR_COPY_H2D);
}

/* One trial: seconds per backend copy of row->size bytes (d2h or h2d). */
static double bt_time_copy(const bt_opts *o, const bt_stage *stg, const bt_row *row, int dir)
{
    for (int i = 0; i < bt_warmup(o, row); i++) bt_copy(stg, row->size, dir);
    stg->k->sync();
    double t0 = mr_now();
    for (int i = 0; i < row->count; i++) bt_copy(stg, row->size, dir);
    stg->k->sync();
    return (mr_now() - t0) / row->count;
}

/* One staged KV block: D2H, put + flush, notice, rank 1's H2D, its ack. */
static void bt_kv_staged_once(tp_ctx *ctx, const bt_stage *stg, tp_rkey *rk, size_t size)
{
    uint64_t sz = size;
    stg->k->copy(stg->host, stg->dev, size, MR_COPY_D2H);
    bt_must(tp_put(ctx, 1, rk, 0, stg->host, size), "tp_put");
    bt_must(tp_flush(ctx, 1, 60), "tp_flush");
    bt_must(tp_send(ctx, 1, MSG_KV_NOTE, &sz, sizeof sz), "kv note");
    tp_msg m = bt_recv(ctx, 60);
    if (m.type != MSG_KV_ACK) bt_must(MR_EPROTO, "kv ack");
    tp_msg_free(&m);
}

/* One staged dispatch round trip; returns 1 when the bytes that came back to
 * rank 0's device buffer differ from what it sent. */
static int bt_tok_staged_once(tp_ctx *ctx, const bt_stage *stg, size_t size, const uint8_t *want)
{
    stg->k->copy(stg->host, stg->dev, size, MR_COPY_D2H);
    bt_must(tp_send(ctx, 1, MSG_ECHO_STG, stg->host, size), "staged send");
    tp_msg m = bt_recv(ctx, 60);
    if (m.type != MSG_ECHO_STG || m.len != size) bt_must(MR_EPROTO, "staged echo");
    stg->k->copy(stg->dev, m.data, size, MR_COPY_H2D);
    tp_msg_release(ctx, &m);
    if (!want) return 0;
    stg->k->copy(stg->host, stg->dev, size, MR_COPY_D2H);
    return memcmp(stg->host, want, size) != 0;
}

static double bt_time_staged(tp_ctx *ctx, const bt_opts *o, const bt_stage *stg, tp_rkey *rk,
                             const bt_row *row, bool kv)
{
    for (int i = 0; i < bt_warmup(o, row); i++) {
        if (kv) bt_kv_staged_once(ctx, stg, rk, row->size);
        else bt_tok_staged_once(ctx, stg, row->size, NULL);
    }
    double t0 = mr_now();
    for (int i = 0; i < row->count; i++) {
        if (kv) bt_kv_staged_once(ctx, stg, rk, row->size);
        else bt_tok_staged_once(ctx, stg, row->size, NULL);
    }
    return (mr_now() - t0) / row->count;
}

/* ---- ucx_perftest ---------------------------------------------------------- */

/* CPU sets of rank 0 and rank 1 (mpirun binds ranks to cores): perftest's
 * client and server run on the same CPUs as our two ranks did. */
static cpu_set_t bt_cpus[2];

static pid_t bt_spawn(char *const argv[], int out_fd, const cpu_set_t *cpus)
{
    pid_t pid = fork();
    if (pid != 0) return pid;
    if (cpus && CPU_COUNT(cpus) > 0) sched_setaffinity(0, sizeof *cpus, cpus);
    int devnull = open("/dev/null", O_RDWR);
    dup2(out_fd >= 0 ? out_fd : devnull, STDOUT_FILENO);
    dup2(devnull, STDERR_FILENO);
    execvp(argv[0], argv);
    _exit(127);
}

/* While perftest runs, rank 0 keeps progressing so rank 1 keeps hearing its
 * heartbeats (a rank silent for heartbeat_timeout_s is declared dead). */
static tp_ctx *bt_keepalive_ctx;

static void bt_idle(double seconds)
{
    if (bt_keepalive_ctx) tp_wait(bt_keepalive_ctx, seconds);
    else usleep((useconds_t)(seconds * 1e6));
}

static bool bt_wait_pid(pid_t pid, double timeout_s, int *status)
{
    double deadline = mr_now() + timeout_s;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) return true;
        if (r < 0 && errno != EINTR) return false;
        if (mr_now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, status, 0);
            return false;
        }
        bt_idle(0.01);
    }
}

/* One client run against a fresh server; overall bandwidth in GB/s, 0 on failure. */
static double bt_perftest_once(const bt_opts *o, const char *test, size_t size, int count, int warmup)
{
    static int port_seq;
    char port[16], size_s[32], count_s[16], warm_s[16];
    snprintf(port, sizeof port, "%d", 20000 + (int)(getpid() % 20000) + port_seq++ % 500);
    snprintf(size_s, sizeof size_s, "%zu", size);
    snprintf(count_s, sizeof count_s, "%d", count);
    snprintf(warm_s, sizeof warm_s, "%d", warmup);
    char *server_argv[] = {(char *)o->perftest_bin, "-p", port, NULL};
    /* -o: a one-sided test's target does not progress, like our rank 1 (asleep in tp_wait) */
    bool one_sided = strstr(test, "put") != NULL;
    char *client_argv[] = {(char *)o->perftest_bin, "127.0.0.1", "-p", port, "-t", (char *)test,
                           "-e", "-s", size_s, "-n", count_s, "-w", warm_s, "-f",
                           one_sided ? "-o" : NULL, NULL};
    pid_t server = bt_spawn(server_argv, -1, &bt_cpus[1]);
    if (server < 0) return 0;
    double gbs = 0;
    for (int attempt = 0; attempt < 5 && gbs == 0; attempt++) {
        bt_idle(attempt ? 0.3 : 0.2); /* let the server listen */
        int pipefd[2];
        if (pipe(pipefd) != 0) break;
        pid_t client = bt_spawn(client_argv, pipefd[1], &bt_cpus[0]);
        close(pipefd[1]);
        char out[16384];
        size_t n = 0;
        double deadline = mr_now() + 120;
        for (;;) {
            struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
            if (bt_keepalive_ctx) tp_wait(bt_keepalive_ctx, 0);
            if (poll(&pfd, 1, 100) > 0) {
                ssize_t r = read(pipefd[0], out + n, sizeof out - 1 - n);
                if (r <= 0) break;
                n += (size_t)r;
                if (n == sizeof out - 1) n = 0; /* keep the tail */
            } else if (mr_now() > deadline) {
                break;
            }
        }
        close(pipefd[0]);
        out[n] = '\0';
        int status = 0;
        if (!bt_wait_pid(client, 5, &status) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) continue;
        /* -f prints one row: iters, 3 latency columns, bw avg, bw overall (MiB/s), 2 rates */
        for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
            double f[8];
            if (sscanf(line, "%lf %lf %lf %lf %lf %lf %lf %lf", &f[0], &f[1], &f[2], &f[3], &f[4],
                       &f[5], &f[6], &f[7]) == 8)
                gbs = f[5] * 1048576.0 / 1e9;
        }
    }
    int status;
    bt_wait_pid(server, 5, &status);
    return gbs;
}

/* ---- output ------------------------------------------------------------- */

static void bt_cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) || !colon) continue;
        colon += 2;
        colon[strcspn(colon, "\n")] = '\0';
        snprintf(buf, cap, "%s", colon);
        break;
    }
    fclose(f);
}

static void bt_print(const bt_opts *o, const bt_row *rows, int n_rows, int argc, char **argv)
{
    char cpu[256], date[32];
    struct utsname u;
    uname(&u);
    bt_cpu_model(cpu, sizeof cpu);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    const char *tls = getenv("UCX_TLS") ? getenv("UCX_TLS") : "(default)";
    if (o->json) {
        printf("{\"bench\": \"transport\", \"date\": \"%s\", \"cpu\": \"%s\", \"cpus\": %ld, "
               "\"kernel\": \"%s\", \"ucx\": \"%s\", \"ucx_tls\": \"%s\", \"rows\": [",
               date, cpu, sysconf(_SC_NPROCESSORS_ONLN), u.release, tp_ucx_version(), tls);
        for (int i = 0; i < n_rows; i++) {
            const bt_row *r = &rows[i];
            printf("%s\n  {\"op\": \"%s\", \"size\": %zu, \"count\": %d, \"time_us\": %.3f, "
                   "\"algbw_gbs\": %.4f, \"wrong\": %d, \"perftest\": \"%s\", \"perftest_gbs\": %.4f, "
                   "\"ratio\": %.4f}",
                   i ? "," : "", r->op, r->size, r->count, r->time_us, r->algbw, r->wrong, r->ref_test,
                   r->ref_gbs, r->ref_gbs > 0 ? r->algbw / r->ref_gbs : 0.0);
        }
        printf("\n]}\n");
        return;
    }
    printf("# moerun bench transport — 2 ranks, %s\n", date);
    printf("# machine: %s, %ld CPUs, Linux %s, UCX %s, UCX_TLS=%s\n", cpu,
           sysconf(_SC_NPROCESSORS_ONLN), u.release, tp_ucx_version(), tls);
    printf("# command:");
    for (int i = 0; i < argc; i++) printf(" %s", argv[i]);
    printf("\n# put: tp_put+tp_flush into rank 1's tp_mem_alloc region (put-reg: tp_mem_register'd "
           "malloc memory), time per put+flush\n");
    printf("# dispatch: tp_send(size) to rank 1 + same-size reply, time per round trip, algbw = 2*size/time;"
           " disp-nc: tp_send_nocopy+tp_flush\n");
    if (o->staged)
        printf("# staged (%s backend): d2h/h2d = backend copy alone; kv-stg = D2H + put + flush + "
               "H2D on rank 1 + ack; tok-stg = D2H + send + H2D, and back; ref 'serial' = sum of "
               "the parts measured above\n", o->staged);
    printf("# perftest: ucx_perftest -t TEST -e -s SIZE -n COUNT [-o for put], server+client on 127.0.0.1 "
           "on our ranks' CPUs, same UCX env; ratio = algbw / perftest; best of %d trials each\n", o->trials);
    printf("#\n# %-9s %12s %7s %12s %12s %7s  %-11s %12s %7s\n", "op", "size(B)", "count", "time(us)",
           "algbw(GB/s)", "#wrong", "perftest", "ref(GB/s)", "ratio");
    for (int i = 0; i < n_rows; i++) {
        const bt_row *r = &rows[i];
        printf("  %-9s %12zu %7d %12.1f %12.2f %7d  %-11s ", r->op, r->size, r->count, r->time_us,
               r->algbw, r->wrong, r->ref_test);
        if (r->ref_gbs > 0) printf("%12.2f %7.2f\n", r->ref_gbs, r->algbw / r->ref_gbs);
        else printf("%12s %7s\n", "-", "-");
    }
}

/* The staged rows of one size, after that size's put and dispatch rows
 * (rows[0..n_rows) so far); returns the new row count. */
static int bt_staged_rows(tp_ctx *ctx, const bt_opts *o, const bt_stage *stg, tp_rkey *rk,
                          const uint8_t *src, size_t size, bt_row *rows, int n_rows)
{
    double put_s = 0, rt_s = 0; /* this size's put and dispatch round trip */
    for (int i = 0; i < n_rows; i++) {
        if (rows[i].size != size) continue;
        if (!strcmp(rows[i].op, "put")) put_s = rows[i].time_us * 1e-6;
        if (!strcmp(rows[i].op, "dispatch")) rt_s = rows[i].time_us * 1e-6;
    }
    static const char *const names[] = {"d2h", "h2d", "kv-stg", "tok-stg"};
    double part_s[2] = {0, 0};
    for (int op = 0; op < 4; op++) {
        bt_row *r = &rows[n_rows++];
        *r = (bt_row){.op = names[op], .size = size,
                      .count = o->count ? o->count : bt_auto_count(size), .ref_test = "-"};
        double best = 1e300;
        for (int t = 0; t < o->trials; t++) {
            double dt = op < 2 ? bt_time_copy(o, stg, r, op == 0 ? MR_COPY_D2H : MR_COPY_H2D)
                               : bt_time_staged(ctx, o, stg, rk, r, op == 2);
            if (dt < best) best = dt;
        }
        bt_must(stg->k->check(), names[op]);
        r->time_us = best * 1e6;
        r->algbw = (op == 3 ? 2.0 : 1.0) * (double)size / best / 1e9;
        if (op < 2) {
            part_s[op] = best;
            /* the copies moved src's pattern back and forth unchanged */
            continue;
        }
        r->ref_test = "serial";
        double serial = op == 2 ? part_s[0] + put_s + part_s[1]
                                : 2 * (part_s[0] + part_s[1]) + rt_s;
        r->ref_gbs = serial > 0 ? (op == 3 ? 2.0 : 1.0) * (double)size / serial / 1e9 : 0;
        r->wrong = op == 2 ? bt_verdict(ctx, REGION_DEV, src, size)
                           : bt_tok_staged_once(ctx, stg, size, src);
        MR_INFO("%-8s %9zu B: %.2f GB/s, serial parts %.2f GB/s", r->op, size, r->algbw,
                r->ref_gbs);
    }
    return n_rows;
}

/* ---- main ----------------------------------------------------------------- */

/* Before MPI is up: only the first rank talks. */
static bool bt_first_rank(void)
{
    const char *r = getenv("OMPI_COMM_WORLD_RANK");
    return !r || !strcmp(r, "0");
}

static int bt_usage(int code)
{
    if (!bt_first_rank()) return code;
    fprintf(code ? stderr : stdout,
            "usage: moerun bench transport [--sizes MiB,...] [--count N] [--warmup N] [--trials N]\n"
            "                              [--registered] [--no-perftest] [--perftest-bin PATH]\n"
            "                              [--quick] [--json] [--staged cuda|devsim]\n"
            "  run through launch/moerun-bench-transport (2 MPI ranks, the cluster's UCX env)\n");
    return code;
}

static mr_status bt_parse(int argc, char **argv, bt_opts *o)
{
    *o = (bt_opts){.n_sizes = 3, .sizes = {1 << 20, 4 << 20, 64 << 20}, .trials = 3,
                   .perftest = true, .perftest_bin = "ucx_perftest"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) o->help = true;
        else if (!strcmp(a, "--json")) o->json = true;
        else if (!strcmp(a, "--registered")) o->registered = true;
        else if (!strcmp(a, "--no-perftest")) o->perftest = false;
        else if (!strcmp(a, "--quick")) {
            o->n_sizes = 2;
            o->trials = 1;
        } else if (!v) {
            return mr_fail(MR_EINVAL, "%s: unknown flag or missing value", a);
        } else if (!strcmp(a, "--staged")) {
            if (!mr_backend_name_valid(v) || !strcmp(v, "cpu"))
                return mr_fail(MR_EINVAL, "--staged: expected cuda or devsim, got '%s'", v);
            o->staged = v;
            i++;
        } else if (!strcmp(a, "--perftest-bin")) {
            o->perftest_bin = v;
            i++;
        } else if (!strcmp(a, "--count")) {
            MR_TRY(mr_parse_int(a, v, 1, 1000000, &o->count));
            i++;
        } else if (!strcmp(a, "--warmup")) {
            MR_TRY(mr_parse_int(a, v, 0, 1000000, &o->warmup));
            i++;
        } else if (!strcmp(a, "--trials")) {
            MR_TRY(mr_parse_int(a, v, 1, 100, &o->trials));
            i++;
        } else if (!strcmp(a, "--sizes")) {
            int32_t *mib = NULL;
            int n = 0;
            MR_TRY(mr_parse_id_list(a, v, &mib, &n));
            if (n < 1 || n > BT_MAX_SIZES) {
                free(mib);
                return mr_fail(MR_EINVAL, "--sizes: 1 to %d sizes", BT_MAX_SIZES);
            }
            for (int k = 0; k < n; k++) {
                if (mib[k] < 1 || mib[k] > 1024) {
                    free(mib);
                    return mr_fail(MR_EINVAL, "--sizes: MiB values in [1, 1024], got %d", mib[k]);
                }
                o->sizes[k] = (size_t)mib[k] << 20;
            }
            o->n_sizes = n;
            free(mib);
            i++;
        } else {
            return mr_fail(MR_EINVAL, "%s: unknown flag", a);
        }
    }
    return MR_OK;
}

int main(int argc, char **argv)
{
    bt_opts o;
    mr_log_set_tag("bench transport");
    mr_status pst = bt_parse(argc, argv, &o);
    if (pst != MR_OK || o.help) {
        if (pst != MR_OK && bt_first_rank()) fprintf(stderr, "moerun bench transport: %s\n", mr_last_error());
        return bt_usage(pst != MR_OK ? 2 : 0);
    }
    size_t max_size = 0;
    for (int i = 0; i < o.n_sizes; i++) max_size = o.sizes[i] > max_size ? o.sizes[i] : max_size;

    tp_options topts = tp_options_default();
    topts.build_id = "bench_transport";
    tp_ctx *ctx = NULL;
    bt_must(tp_init(&argc, &argv, TP_ROLE_OTHER, &topts, &ctx), "tp_init");
    if (tp_size(ctx) != 2) {
        if (tp_rank(ctx) == 0) MR_ERROR("needs exactly 2 MPI ranks, got %d", tp_size(ctx));
        tp_finalize(ctx);
        return 2;
    }
    if (tp_rank(ctx) == 1) {
        bt_serve(ctx, &o, max_size);
        tp_finalize(ctx);
        return 0;
    }

    uint8_t *src = malloc(max_size);
    if (!src) bt_must(MR_ENOMEM, "malloc");
    for (size_t i = 0; i < max_size; i++) src[i] = (uint8_t)(i * 131 + (i >> 12));
    bt_stage stg;
    bt_stage_open(&o, max_size, &stg);
    if (stg.k) { /* rank 0's device buffer holds the pattern */
        stg.k->copy(stg.dev, src, max_size, MR_COPY_H2D);
        bt_must(stg.k->check(), "staged upload");
    }
    tp_msg m = bt_recv(ctx, 60);
    uint64_t k_len[2];
    if (m.type != MSG_KEYS || m.len < sizeof(cpu_set_t) + sizeof k_len) bt_must(MR_EPROTO, "keys message");
    memcpy(&bt_cpus[1], m.data, sizeof(cpu_set_t));
    memcpy(k_len, (const uint8_t *)m.data + sizeof(cpu_set_t), sizeof k_len);
    const uint8_t *keys = (const uint8_t *)m.data + sizeof(cpu_set_t) + sizeof k_len;
    if (sched_getaffinity(0, sizeof bt_cpus[0], &bt_cpus[0]) != 0) CPU_ZERO(&bt_cpus[0]);
    tp_rkey *rk_alloc = NULL, *rk_reg = NULL;
    bt_must(tp_rkey_import(ctx, 1, keys, k_len[0], 0, &rk_alloc), "import key");
    if (o.registered) bt_must(tp_rkey_import(ctx, 1, keys + k_len[0], k_len[1], 0, &rk_reg), "import key");
    tp_msg_free(&m);
    bt_keepalive_ctx = ctx;

    /* Per row, trials alternate ours and perftest's (rank 1 sleeps in tp_wait
     * meanwhile), so both see the same machine noise; best of each. */
    bt_row rows[BT_MAX_ROWS];
    int n_rows = 0;
    for (int s = 0; s < o.n_sizes; s++) {
        for (int op = 0; op < 4; op++) { /* put, put-reg, dispatch, disp-nc */
            static const char *const names[] = {"put", "put-reg", "dispatch", "disp-nc"};
            bool dispatch = op >= 2, reuse_ref = op == 1 || op == 3;
            if (op == 1 && !o.registered) continue;
            bt_row *r = &rows[n_rows++];
            *r = (bt_row){.op = names[op], .size = o.sizes[s],
                          .count = o.count ? o.count : bt_auto_count(o.sizes[s]),
                          .ref_test = dispatch ? "ucp_am_lat" : "ucp_put_bw"};
            double best = 1e300;
            for (int t = 0; t < o.trials; t++) {
                double dt = dispatch ? bt_time_dispatch(ctx, &o, src, r, op == 3)
                                     : bt_time_put(ctx, &o, op == 0 ? rk_alloc : rk_reg, src, r);
                if (dt < best) best = dt;
                if (o.perftest && !reuse_ref) {
                    double g = bt_perftest_once(&o, r->ref_test, r->size, r->count, bt_warmup(&o, r));
                    if (g > r->ref_gbs) r->ref_gbs = g;
                }
            }
            r->time_us = best * 1e6;
            r->algbw = (dispatch ? 2.0 : 1.0) * (double)r->size / best / 1e9;
            r->wrong = dispatch ? bt_round_trip(ctx, src, r->size, op == 3, true)
                                : bt_verdict(ctx, op == 0 ? REGION_ALLOC : REGION_REG, src, r->size);
            if (reuse_ref) r->ref_gbs = r[-1].ref_gbs; /* same perftest as the row above */
            MR_INFO("%-8s %9zu B: %.2f GB/s, perftest %s %.2f GB/s", r->op, r->size, r->algbw,
                    r->ref_test, r->ref_gbs);
            if (o.perftest && r->ref_gbs == 0)
                MR_WARN("%s %zu B: no result from %s", r->ref_test, r->size, o.perftest_bin);
        }
        if (stg.k) n_rows = bt_staged_rows(ctx, &o, &stg, rk_alloc, src, o.sizes[s], rows, n_rows);
    }
    tp_rkey_release(rk_alloc);
    tp_rkey_release(rk_reg);
    bt_must(tp_send(ctx, 1, MSG_QUIT, NULL, 0), "quit");
    tp_finalize(ctx);
    bt_stage_close(&stg);
    bt_print(&o, rows, n_rows, argc, argv);
    int wrong = 0;
    for (int i = 0; i < n_rows; i++) wrong += rows[i].wrong;
    free(src);
    return wrong ? 1 : 0;
}
