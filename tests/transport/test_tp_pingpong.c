/* test_tp_pingpong — 2 ranks (coordinator + decode).
 *
 * test_messages_of_0_1_100k_8m_bytes_echo_byte_exact: rank 0 sends each size,
 *   rank 1 checks every byte and echoes it, rank 0 checks the echo.
 * test_burst_of_mixed_sizes_arrives_in_send_order: 8 MiB rendezvous messages
 *   interleaved with tiny eager ones, sent without waiting, arrive in order.
 * test_released_buffers_are_recycled_without_corrupting_later_messages,
 * test_send2_gathers_header_and_body, test_sender_buffer_reusable_after_send,
 * test_nocopy_send_buffer_reusable_after_flush,
 * test_roles_and_stats, test_peer_leaving_with_fin_is_reported_once. */
#include "tp_test.h"

enum { MSG_DATA = 16, MSG_ECHO, MSG_BURST, MSG_GATHER, MSG_NOCOPY, MSG_BYE };

typedef struct {
    uint32_t seq;
    uint32_t len;
} burst_hdr;

static void check_roles(tp_ctx *ctx)
{
    CHECK(tp_size(ctx) == 2, "size %d", tp_size(ctx));
    CHECK(tp_count_role(ctx, TP_ROLE_COORDINATOR) == 1, "coordinators");
    CHECK(tp_count_role(ctx, TP_ROLE_DECODE) == 1, "decoders");
    CHECK(tp_count_role(ctx, TP_ROLE_EXPERT) == 0, "experts");
    CHECK(tp_rank_of(ctx, TP_ROLE_DECODE, 0) == 1, "decode[0] is rank %d",
          tp_rank_of(ctx, TP_ROLE_DECODE, 0));
    CHECK(tp_rank_of(ctx, TP_ROLE_DECODE, 1) == -1, "no decode[1]");
    const tp_peer *p = tp_peer_info(ctx, 1);
    CHECK(p && p->role == TP_ROLE_DECODE && p->role_index == 0 && p->alive && p->pid > 0,
          "peer 1 info");
    CHECK(tp_peer_info(ctx, 2) == NULL, "out of range peer");
    CHECK(tp_peer_alive(ctx, 0) && tp_peer_alive(ctx, 1) && !tp_peer_alive(ctx, 5), "alive");
}

static const size_t sizes[] = {0, 1, 100 << 10, 8 << 20};
#define N_SIZES (sizeof sizes / sizeof sizes[0])
#define N_BURST 24

static void rank0(tp_ctx *ctx)
{
    uint8_t *buf = malloc(8 << 20);
    CHECK(buf, "malloc");
    /* echo every size */
    for (size_t k = 0; k < N_SIZES; k++) {
        tpt_fill(buf, sizes[k], k);
        CHECK_OK(tp_send(ctx, 1, MSG_DATA, buf, sizes[k]));
        memset(buf, 0xEE, sizes[k]); /* the send copied: scribbling must not matter */
        tp_msg m = tpt_recv(ctx, 10);
        CHECK(m.src == 1 && m.type == MSG_ECHO && m.len == sizes[k], "echo %zu: src %d type %u len %zu",
              sizes[k], m.src, m.type, m.len);
        CHECK(tpt_verify(m.data, m.len, k) == m.len, "echo of %zu bytes differs at %zu", m.len,
              tpt_verify(m.data, m.len, k));
        CHECK(m.len || m.data == NULL, "empty message has data");
        tp_msg_free(&m);
    }
    /* burst: big and small interleaved, no waiting */
    for (uint32_t i = 0; i < N_BURST; i++) {
        size_t len = i % 3 == 0 ? (size_t)(8 << 20) - i : (size_t)i * 7;
        tpt_fill(buf, len, 1000 + i);
        burst_hdr h = {.seq = i, .len = (uint32_t)len};
        CHECK_OK(tp_send2(ctx, 1, MSG_BURST, &h, sizeof h, buf, len));
    }
    /* send2 with a header only and a body only */
    CHECK_OK(tp_send2(ctx, 1, MSG_GATHER, "head", 4, NULL, 0));
    CHECK_OK(tp_send2(ctx, 1, MSG_GATHER, NULL, 0, "body", 4));
    /* zero-copy: the buffer is the sender's until tp_flush */
    for (uint32_t i = 0; i < 3; i++) {
        size_t len = i == 1 ? 0 : (size_t)(8 << 20) - i;
        tpt_fill(buf, len, 2000 + i);
        CHECK_OK(tp_send_nocopy(ctx, 1, MSG_NOCOPY, buf, len));
        CHECK_OK(tp_flush(ctx, 1, 20));
        memset(buf, 0xAB, len); /* after the flush, scribbling must not matter */
    }
    tp_msg m = tpt_recv(ctx, 20);
    CHECK(m.type == MSG_ECHO && m.len == 0, "burst verdict");
    tp_msg_free(&m);

    /* errors that must not reach the wire */
    CHECK(tp_send(ctx, 0, MSG_DATA, "x", 1) == MR_EINVAL, "send to self");
    CHECK(tp_send(ctx, 7, MSG_DATA, "x", 1) == MR_EINVAL, "send out of range");
    CHECK(tp_send(ctx, 1, 3, "x", 1) == MR_EINVAL, "reserved type");

    const tp_link_stats *s = tp_link(ctx, 1);
    CHECK(s && s->msgs_sent == N_SIZES + N_BURST + 2 + 3 && (s->msgs_recv == N_SIZES + 1 || s->msgs_recv == N_SIZES + 2) /* + bye */,
          "stats sent %llu recv %llu", (unsigned long long)s->msgs_sent,
          (unsigned long long)s->msgs_recv);
    CHECK(tp_link(ctx, 9) == NULL, "stats out of range");

    /* rank 1 leaves first (FIN): reported once as TP_MSG_PEER_DEAD, not fenced */
    m = tpt_recv(ctx, 10);
    CHECK(m.type == MSG_BYE, "bye");
    tp_msg_free(&m);
    double t0 = mr_now();
    m = tpt_recv(ctx, 8);
    CHECK(m.type == TP_MSG_PEER_DEAD && m.src == 1, "departure: type %u src %d", m.type, m.src);
    CHECK(!tp_peer_alive(ctx, 1), "rank 1 still alive");
    CHECK(tp_send(ctx, 1, MSG_DATA, "x", 1) == MR_EPEER, "send to a departed rank");
    CHECK_OK(tp_wait(ctx, 0.3));
    CHECK(!tp_poll(ctx, &m), "a second message after departure (type %u)", m.type);
    fprintf(stderr, "[rank 0] departure of rank 1 seen after %.3f s\n", mr_now() - t0);
    free(buf);
}

static void rank1(tp_ctx *ctx)
{
    for (size_t k = 0; k < N_SIZES; k++) {
        tp_msg m = tpt_recv(ctx, 10);
        CHECK(m.src == 0 && m.type == MSG_DATA && m.len == sizes[k], "size %zu: got len %zu type %u",
              sizes[k], m.len, m.type);
        CHECK(tpt_verify(m.data, m.len, k) == m.len, "%zu-byte message differs at %zu", m.len,
              tpt_verify(m.data, m.len, k));
        CHECK_OK(tp_send(ctx, 0, MSG_ECHO, m.data, m.len));
        tp_msg_free(&m);
    }
    for (uint32_t i = 0; i < N_BURST; i++) {
        tp_msg m = tpt_recv(ctx, 20);
        burst_hdr h;
        CHECK(m.type == MSG_BURST && m.len >= sizeof h, "burst %u: type %u len %zu", i, m.type, m.len);
        memcpy(&h, m.data, sizeof h);
        CHECK(h.seq == i, "burst message %u arrived as number %u", h.seq, i);
        CHECK(m.len == sizeof h + h.len, "burst %u length", i);
        const uint8_t *body = (const uint8_t *)m.data + sizeof h;
        CHECK(tpt_verify(body, h.len, 1000 + i) == h.len, "burst %u differs", i);
        tp_msg_release(ctx, &m); /* big buffers are recycled: later messages must still be intact */
        CHECK(m.data == NULL && m.len == 0, "released message not cleared");
    }
    tp_msg m = tpt_recv(ctx, 10);
    CHECK(m.type == MSG_GATHER && m.len == 4 && !memcmp(m.data, "head", 4), "header-only send2");
    tp_msg_free(&m);
    m = tpt_recv(ctx, 10);
    CHECK(m.type == MSG_GATHER && m.len == 4 && !memcmp(m.data, "body", 4), "body-only send2");
    tp_msg_free(&m);
    for (uint32_t i = 0; i < 3; i++) {
        m = tpt_recv(ctx, 20);
        size_t len = i == 1 ? 0 : (size_t)(8 << 20) - i;
        CHECK(m.type == MSG_NOCOPY && m.len == len, "nocopy %u: type %u len %zu", i, m.type, m.len);
        CHECK(tpt_verify(m.data, len, 2000 + i) == len, "nocopy %u differs", i);
        tp_msg_free(&m);
    }
    CHECK_OK(tp_send(ctx, 0, MSG_ECHO, NULL, 0));
    CHECK_OK(tp_send(ctx, 0, MSG_BYE, NULL, 0));
}

int main(int argc, char **argv)
{
    tp_ctx *ctx = NULL;
    tp_options o = tp_options_default();
    o.model_hash = 0x1234;
    o.build_id = "test";
    int want_rank = -1;
    /* rank 0 is the coordinator; the role must be known before tp_init */
    const char *env_rank = getenv("OMPI_COMM_WORLD_RANK");
    if (env_rank) want_rank = atoi(env_rank);
    CHECK_OK(tp_init(&argc, &argv, want_rank == 0 ? TP_ROLE_COORDINATOR : TP_ROLE_DECODE, &o, &ctx));
    tpt_rank = tp_rank(ctx);
    CHECK(want_rank < 0 || want_rank == tpt_rank, "rank");
    check_roles(ctx);
    if (tpt_rank == 0) rank0(ctx);
    else rank1(ctx);
    CHECK_OK(tp_finalize(ctx));
    tpt_pass(tpt_rank);
    return 0;
}
