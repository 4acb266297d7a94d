/* test_tp_frame_cap — 2 ranks; rank 1 runs with max_frame_bytes = 4096.
 *
 * test_oversized_frames_are_dropped_counted_and_the_rank_keeps_serving:
 *   rank 0 sends 64 KiB (eager) and 4 MiB (rendezvous) messages, then a
 *   100-byte one; rank 1 receives only the 100-byte one, counts 2 rejected
 *   frames, and still answers. A sender refuses frames over its own cap. */
#include "tp_test.h"

enum { MSG_BIG = 16, MSG_SMALL, MSG_REPLY };
#define CAP 4096

int main(int argc, char **argv)
{
    tp_ctx *ctx = NULL;
    tp_options o = tp_options_default();
    const char *env_rank = getenv("OMPI_COMM_WORLD_RANK");
    if (env_rank && atoi(env_rank) == 1) o.max_frame_bytes = CAP;
    CHECK_OK(tp_init(&argc, &argv, TP_ROLE_OTHER, &o, &ctx));
    tpt_rank = tp_rank(ctx);
    CHECK(tp_size(ctx) == 2, "size");
    if (tpt_rank == 0) {
        size_t big = (size_t)4 << 20;
        uint8_t *buf = calloc(1, big);
        CHECK_OK(tp_send(ctx, 1, MSG_BIG, buf, 64 << 10));
        CHECK_OK(tp_send(ctx, 1, MSG_BIG, buf, big));
        CHECK_OK(tp_flush(ctx, 1, 10)); /* the rejected rendezvous send completes too */
        tpt_fill(buf, 100, 7);
        CHECK_OK(tp_send(ctx, 1, MSG_SMALL, buf, 100));
        tp_msg m = tpt_recv(ctx, 15);
        CHECK(m.type == MSG_REPLY && m.len == CAP, "reply type %u len %zu", m.type, m.len);
        tp_msg_free(&m);
        free(buf);
    } else {
        tp_msg m = tpt_recv(ctx, 15);
        CHECK(m.type == MSG_SMALL && m.len == 100 && tpt_verify(m.data, 100, 7) == 100,
              "first delivered message: type %u len %zu", m.type, m.len);
        tp_msg_free(&m);
        const tp_link_stats *s = tp_link(ctx, 0);
        CHECK(s->frames_rejected == 2 && s->msgs_recv == 1, "rejected %llu recv %llu",
              (unsigned long long)s->frames_rejected, (unsigned long long)s->msgs_recv);
        uint8_t reply[CAP + 1] = {0};
        CHECK(tp_send(ctx, 0, MSG_REPLY, reply, CAP + 1) == MR_EINVAL, "sender-side cap");
        CHECK_OK(tp_send(ctx, 0, MSG_REPLY, reply, CAP));
    }
    CHECK_OK(tp_finalize(ctx));
    tpt_pass(tpt_rank);
    return 0;
}
