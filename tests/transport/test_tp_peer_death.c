/* test_tp_peer_death — 3 ranks; rank 2 dies right after bootstrap and a key exchange.
 *
 *   test_tp_peer_death kill    rank 2 raises SIGKILL on itself: seen at once
 *                               (pidfd on this host; UCX endpoint error on tcp)
 *   test_tp_peer_death stop    rank 2 raises SIGSTOP on itself: UCX never
 *                               notices; the heartbeat (period 0.1 s, timeout
 *                               1 s) does, and the survivors fence it (SIGKILL)
 *   test_tp_peer_death declare rank 2 stays healthy; rank 0's application calls
 *                               tp_declare_dead(2): rank 2 is fenced, rank 1
 *                               sees its process exit
 *
 * Rank 2 ships the key of a tp_mem_alloc region, waits until both survivors
 * imported it, sends the time of its death and dies; ranks 0 and 1 keep
 * rendezvous-sized sends and puts in flight to it. Checks on ranks 0 and 1:
 *   test_death_reported_once_as_peer_dead_within_5s,
 *   test_send_put_flush_to_dead_rank_return_epeer_without_blocking,
 *   (stop) test_flush_to_stopped_rank_times_out_instead_of_hanging,
 *   (stop) test_stopped_rank_is_fenced: its process is gone afterwards,
 *   test_survivors_still_exchange_messages, test_finalize_completes. */
#include "tp_test.h"

#include <errno.h>
#include <signal.h>

enum { MSG_KEY = 16, MSG_IMPORTED, MSG_DYING, MSG_BULK, MSG_PING };

typedef struct {
    uint64_t key_len;
} key_msg;

static bool tpt_pid_exists(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d", pid);
    return access(path, F_OK) == 0;
}

static bool process_gone(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return true;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && (p[2] == 'Z' || p[2] == 'X'); /* zombie: killed, not yet reaped */
}

typedef enum { MODE_KILL, MODE_STOP, MODE_DECLARE } death_mode;

static void dying_rank(tp_ctx *ctx, death_mode mode)
{
    tp_mem *mem = NULL;
    CHECK_OK(tp_mem_alloc(ctx, 4 << 20, &mem));
    void *key = NULL;
    size_t key_len = 0;
    CHECK_OK(tp_mem_pack(ctx, mem, &key, &key_len));
    key_msg h = {.key_len = key_len};
    for (int r = 0; r < 2; r++) CHECK_OK(tp_send2(ctx, r, MSG_KEY, &h, sizeof h, key, key_len));
    /* die only after both imported the key: UCX 1.13 crashes importing a
     * posix key whose owner is already gone (see tp_rkey_import) */
    for (int acks = 0; acks < 2; acks++) {
        tp_msg m = tpt_recv(ctx, 10);
        CHECK(m.type == MSG_IMPORTED, "ack type %u", m.type);
        tp_msg_free(&m);
    }
    double death = mr_now();
    for (int r = 1; r >= 0; r--) { /* rank 1 first: in "declare" mode rank 0 kills us on receipt */
        CHECK_OK(tp_send(ctx, r, MSG_DYING, &death, sizeof death));
        CHECK_OK(tp_flush(ctx, r, 5));
    }
    if (mode == MODE_DECLARE)
        for (;;) tp_wait(ctx, 1.0); /* healthy, until rank 0 fences us */
    raise(mode == MODE_STOP ? SIGSTOP : SIGKILL);
    /* SIGSTOP: the survivors' SIGKILL ends us here */
    for (;;) pause();
}

static void survivor(tp_ctx *ctx, death_mode mode)
{
    const bool stop = mode == MODE_STOP;
    const int me = tpt_rank, other = 1 - me, dead = 2;
    const int dead_pid = tp_peer_info(ctx, dead)->pid;
    tp_msg m = tpt_recv(ctx, 10);
    key_msg h;
    CHECK(m.type == MSG_KEY && m.src == dead && m.len >= sizeof h, "key message");
    memcpy(&h, m.data, sizeof h);
    tp_rkey *rk = NULL;
    CHECK_OK(tp_rkey_import(ctx, dead, (uint8_t *)m.data + sizeof h, h.key_len, 0, &rk));
    tp_msg_free(&m);
    CHECK_OK(tp_send(ctx, dead, MSG_IMPORTED, NULL, 0));
    m = tpt_recv(ctx, 10);
    double death_time;
    CHECK(m.type == MSG_DYING && m.len == sizeof death_time, "dying message: type %u", m.type);
    memcpy(&death_time, m.data, sizeof death_time);
    tp_msg_free(&m);
    mr_status st;
    if (mode == MODE_DECLARE && me == 0) tp_declare_dead(ctx, dead, "test: the application says so");

    /* keep traffic in flight to the dying rank until tp says it is dead */
    size_t bulk = 1 << 20;
    uint8_t *buf = calloc(1, bulk);
    if (stop) { /* a stopped peer never completes a rendezvous: flush must time out, not hang */
        uint8_t *big = calloc(1, 16 << 20);
        st = tp_send(ctx, dead, MSG_BULK, big, 16 << 20);
        free(big);
        CHECK(st == MR_OK || st == MR_EPEER, "send to the stopped rank: %s", mr_status_name(st));
        double t0 = mr_now();
        st = tp_flush(ctx, dead, 0.2);
        CHECK(st == MR_ETIMEDOUT || (st == MR_EPEER && !tp_peer_alive(ctx, dead)),
              "flush to a stopped rank: %s", mr_status_name(st));
        CHECK(mr_now() - t0 < 0.5, "flush with a 0.2 s deadline took %.2f s", mr_now() - t0);
    }
    int n_sent = 0, n_dead = 0, n_early = 0, i_early = 0;
    tp_msg early[4];
    double seen = 0, limit = stop ? 6.0 : 5.0;
    while (!n_dead) {
        CHECK(mr_now() - death_time < limit, "no PEER_DEAD for rank 2 after %.1f s (its process %s)",
              limit, process_gone(dead_pid) ? (access("/proc/self", F_OK) == 0 && tpt_pid_exists(dead_pid) ? "is a zombie" : "is gone") : "still runs");
        if (n_sent < 16 && tp_peer_alive(ctx, dead)) {
            st = tp_send(ctx, dead, MSG_BULK, buf, bulk);
            CHECK(st == MR_OK || st == MR_EPEER, "send while dying: %s", mr_status_name(st));
            if (rk) {
                st = tp_put(ctx, dead, rk, (uint64_t)(n_sent % 4) << 20, buf, bulk);
                CHECK(st == MR_OK || st == MR_EPEER, "put while dying: %s", mr_status_name(st));
            }
            n_sent++;
        }
        CHECK_OK(tp_wait(ctx, 0.05));
        while (tp_poll(ctx, &m)) {
            if (m.type == MSG_PING && m.src == other && n_early < 4) { /* the other survivor is ahead */
                early[n_early++] = m;
                continue;
            }
            CHECK(m.type == TP_MSG_PEER_DEAD && m.src == dead, "unexpected message type %u from %d",
                  m.type, m.src);
            n_dead++;
            seen = mr_now();
            tp_msg_free(&m);
        }
    }
    fprintf(stderr, "[rank %d] rank 2 reported dead %.3f s after it %s (%d bulk sends)\n", me,
            seen - death_time,
            mode == MODE_STOP ? "stopped itself" : mode == MODE_KILL ? "killed itself" : "was declared dead",
            n_sent);
    CHECK(!tp_peer_alive(ctx, dead) && !tp_peer_info(ctx, dead)->alive, "still alive");

    double t0 = mr_now();
    CHECK(tp_send(ctx, dead, MSG_BULK, buf, bulk) == MR_EPEER, "send to the dead");
    CHECK(tp_flush(ctx, dead, 30) == MR_EPEER, "flush to the dead");
    if (rk) CHECK(tp_put(ctx, dead, rk, 0, buf, 16) == MR_EPEER, "put to the dead");
    CHECK(mr_now() - t0 < 0.5, "calls on a dead rank blocked for %.2f s", mr_now() - t0);
    tp_rkey_release(rk);
    if (mode != MODE_KILL) {
        double t1 = mr_now();
        while (!process_gone(dead_pid) && mr_now() - t1 < 3) CHECK_OK(tp_wait(ctx, 0.05));
        CHECK(process_gone(dead_pid), "rank 2 (pid %d) was not fenced", dead_pid);
    }

    /* survivors keep serving each other */
    for (int i = 0; i < 3; i++) {
        size_t len = i == 2 ? (size_t)(8 << 20) : (size_t)100 * i;
        uint8_t *out = malloc(len ? len : 1);
        tpt_fill(out, len, (uint64_t)me * 100 + i);
        CHECK_OK(tp_send(ctx, other, MSG_PING, out, len));
        free(out);
        m = i_early < n_early ? early[i_early++] : tpt_recv(ctx, 10);
        CHECK(m.type == MSG_PING && m.src == other && m.len == len, "ping %d: type %u", i, m.type);
        CHECK(tpt_verify(m.data, len, (uint64_t)other * 100 + i) == len, "ping bytes");
        tp_msg_free(&m);
    }
    /* no second PEER_DEAD for rank 2 (the other survivor may leave: FIN) */
    for (double t1 = mr_now(); mr_now() - t1 < 0.3;) {
        CHECK_OK(tp_wait(ctx, 0.05));
        if (!tp_poll(ctx, &m)) continue;
        CHECK(m.type == TP_MSG_PEER_DEAD && m.src == other, "extra message type %u from %d", m.type,
              m.src);
        tp_msg_free(&m);
    }
    free(buf);
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "kill";
    death_mode mode = !strcmp(what, "stop") ? MODE_STOP : !strcmp(what, "declare") ? MODE_DECLARE : MODE_KILL;
    tp_options o = tp_options_default();
    if (mode == MODE_STOP) {
        o.heartbeat_period_s = 0.1;
        o.heartbeat_timeout_s = 1.0;
    }
    tp_ctx *ctx = NULL;
    CHECK_OK(tp_init(&argc, &argv, TP_ROLE_OTHER, &o, &ctx));
    tpt_rank = tp_rank(ctx);
    CHECK(tp_size(ctx) == 3, "want 3 ranks");
    if (tpt_rank == 2) dying_rank(ctx, mode);
    survivor(ctx, mode);
    double t0 = mr_now();
    CHECK_OK(tp_finalize(ctx));
    fprintf(stderr, "[rank %d] tp_finalize took %.3f s\n", tpt_rank, mr_now() - t0);
    tpt_pass(tpt_rank);
    return 0;
}
