/* test_tp_alltoall — 4 ranks, every rank sends K messages to every other rank
 * at once (sizes from 0 B to 1 MiB), then receives (size-1)*K.
 *
 * test_all_to_all_every_message_arrives_once_byte_exact_in_per_peer_order:
 *   each message carries (src, dst, seq); the receiver checks the bytes, that
 *   seq from one src counts up without gaps, and the per-link message and
 *   byte counters. */
#include "tp_test.h"

enum { MSG_A2A = 16 };
#define K 12

typedef struct {
    int32_t src, dst;
    uint32_t seq, len;
} a2a_hdr;

static size_t msg_len(int src, int dst, uint32_t seq)
{
    static const size_t lens[] = {0, 3, 1000, 70000, 300000, 1 << 20};
    return lens[(size_t)(src * 7 + dst * 3 + (int)seq) % (sizeof lens / sizeof lens[0])];
}

static uint64_t stream_id(int src, int dst, uint32_t seq)
{
    return ((uint64_t)src << 40) | ((uint64_t)dst << 32) | seq;
}

int main(int argc, char **argv)
{
    tp_ctx *ctx = NULL;
    tp_options o = tp_options_default();
    CHECK_OK(tp_init(&argc, &argv, TP_ROLE_EXPERT, &o, &ctx));
    int me = tpt_rank = tp_rank(ctx), n = tp_size(ctx);
    CHECK(n == 4, "want 4 ranks, got %d", n);
    CHECK(tp_count_role(ctx, TP_ROLE_EXPERT) == 4 && tp_rank_of(ctx, TP_ROLE_EXPERT, 3) == 3, "roles");

    uint8_t *buf = malloc(1 << 20);
    CHECK(buf, "malloc");
    for (uint32_t seq = 0; seq < K; seq++) {
        for (int d = 1; d < n; d++) {
            int dst = (me + d) % n;
            a2a_hdr h = {.src = me, .dst = dst, .seq = seq, .len = (uint32_t)msg_len(me, dst, seq)};
            tpt_fill(buf, h.len, stream_id(me, dst, seq));
            CHECK_OK(tp_send2(ctx, dst, MSG_A2A, &h, sizeof h, buf, h.len));
        }
    }
    uint32_t next_seq[4] = {0};
    for (int got = 0; got < (n - 1) * K;) {
        tp_msg m = tpt_recv(ctx, 15);
        if (m.type == TP_MSG_PEER_DEAD) { /* a rank that finished first left (FIN) */
            CHECK(next_seq[m.src] == K && !tp_peer_alive(ctx, m.src), "rank %d left after %u messages",
                  m.src, next_seq[m.src]);
            continue;
        }
        got++;
        a2a_hdr h;
        CHECK(m.type == MSG_A2A && m.len >= sizeof h, "type %u len %zu", m.type, m.len);
        memcpy(&h, m.data, sizeof h);
        CHECK(h.src == m.src && h.dst == me, "header says %d->%d, tp says %d->%d", h.src, h.dst,
              m.src, me);
        CHECK(h.seq == next_seq[m.src], "from rank %d: seq %u, expected %u", m.src, h.seq,
              next_seq[m.src]);
        next_seq[m.src]++;
        CHECK(h.len == msg_len(h.src, me, h.seq) && m.len == sizeof h + h.len, "length");
        const uint8_t *body = (const uint8_t *)m.data + sizeof h;
        CHECK(tpt_verify(body, h.len, stream_id(h.src, me, h.seq)) == h.len, "bytes from %d seq %u",
              h.src, h.seq);
        tp_msg_free(&m);
    }
    for (int r = 0; r < n; r++) {
        if (r == me) continue;
        const tp_link_stats *s = tp_link(ctx, r);
        CHECK(s->msgs_sent == K && s->msgs_recv == K && s->frames_rejected == 0,
              "link %d: sent %llu recv %llu", r, (unsigned long long)s->msgs_sent,
              (unsigned long long)s->msgs_recv);
        uint64_t want_sent = 0, want_recv = 0;
        for (uint32_t seq = 0; seq < K; seq++) {
            want_sent += sizeof(a2a_hdr) + msg_len(me, r, seq);
            want_recv += sizeof(a2a_hdr) + msg_len(r, me, seq);
        }
        CHECK(s->bytes_sent == want_sent && s->bytes_recv == want_recv,
              "link %d: bytes sent %llu (want %llu) recv %llu (want %llu)", r,
              (unsigned long long)s->bytes_sent, (unsigned long long)want_sent,
              (unsigned long long)s->bytes_recv, (unsigned long long)want_recv);
    }
    free(buf);
    CHECK_OK(tp_finalize(ctx));
    tpt_pass(me);
    return 0;
}
