/* test_tp_rma — 2 ranks. Rank 1 registers 16 MiB of malloc'd memory and lets
 * tp allocate 1 MiB, ships both packed keys; rank 0 imports them, puts at
 * several (also unaligned) offsets, flushes, and says "done"; rank 1 checks
 * every byte of both regions (written ranges and untouched zeros).
 *
 * test_put_then_flush_lands_byte_exact_at_offsets,
 * test_put_outside_region_is_erange, test_key_of_other_peer_is_einval,
 * test_malformed_key_is_eproto, test_sub_window_base_offsets_from_there. */
#include "tp_test.h"

enum { MSG_KEYS = 16, MSG_DONE, MSG_VERDICT };
#define REG_LEN ((size_t)16 << 20)
#define ALLOC_LEN ((size_t)1 << 20)

typedef struct {
    uint64_t off, len;
} span;

static const span reg_spans[] = {
    {0, 4096}, {4096 * 3 + 1, 777}, {(8 << 20) - 3, 3 << 20}, {REG_LEN - 65536, 65536}, {1 << 20, 1},
};
static const span alloc_spans[] = {{17, 1000}, {ALLOC_LEN - 8, 8}};
#define WINDOW_OFF 4096 /* the alloc region is also imported as a window starting here */

static void check_region(const uint8_t *base, size_t len, const span *spans, size_t n_spans,
                         uint64_t seed, const char *what)
{
    uint8_t *want = calloc(1, len);
    CHECK(want, "calloc");
    for (size_t i = 0; i < n_spans; i++) tpt_fill(want + spans[i].off, spans[i].len, seed + i);
    for (size_t i = 0; i < len; i++)
        CHECK(base[i] == want[i], "%s byte %zu: 0x%02x, want 0x%02x", what, i, base[i], want[i]);
    free(want);
}

static void rank1(tp_ctx *ctx)
{
    uint8_t *reg = calloc(1, REG_LEN);
    CHECK(reg, "calloc");
    tp_mem *m_reg = NULL, *m_alloc = NULL;
    CHECK_OK(tp_mem_register(ctx, reg, REG_LEN, &m_reg));
    CHECK_OK(tp_mem_alloc(ctx, ALLOC_LEN, &m_alloc));
    CHECK(tp_mem_len(m_alloc) == ALLOC_LEN && tp_mem_base(m_reg) == reg, "mem accessors");
    memset(tp_mem_base(m_alloc), 0, ALLOC_LEN);
    void *k1 = NULL, *k2 = NULL;
    size_t k1_len = 0, k2_len = 0;
    CHECK_OK(tp_mem_pack(ctx, m_reg, &k1, &k1_len));
    CHECK_OK(tp_mem_pack(ctx, m_alloc, &k2, &k2_len));
    uint64_t lens[2] = {k1_len, k2_len};
    uint8_t *msg = malloc(sizeof lens + k1_len + k2_len);
    memcpy(msg, lens, sizeof lens);
    memcpy(msg + sizeof lens, k1, k1_len);
    memcpy(msg + sizeof lens + k1_len, k2, k2_len);
    CHECK_OK(tp_send(ctx, 0, MSG_KEYS, msg, sizeof lens + k1_len + k2_len));
    free(msg);
    free(k1);
    free(k2);

    tp_msg m = tpt_recv(ctx, 15);
    CHECK(m.type == MSG_DONE, "done: type %u", m.type);
    tp_msg_free(&m);
    check_region(reg, REG_LEN, reg_spans, sizeof reg_spans / sizeof *reg_spans, 100, "registered");
    /* alloc region: direct spans, and the window import shifted by WINDOW_OFF */
    span shifted[4];
    size_t n = sizeof alloc_spans / sizeof *alloc_spans;
    memcpy(shifted, alloc_spans, sizeof alloc_spans);
    shifted[n] = (span){WINDOW_OFF + 5, 300};
    check_region(tp_mem_base(m_alloc), ALLOC_LEN, shifted, n + 1, 200, "allocated");
    CHECK_OK(tp_send(ctx, 0, MSG_VERDICT, NULL, 0));
    tp_mem_deregister(ctx, m_reg);
    tp_mem_deregister(ctx, m_alloc);
    free(reg);
}

static void rank0(tp_ctx *ctx)
{
    tp_msg m = tpt_recv(ctx, 15);
    uint64_t lens[2];
    CHECK(m.type == MSG_KEYS && m.len >= sizeof lens, "keys");
    memcpy(lens, m.data, sizeof lens);
    const uint8_t *k1 = (const uint8_t *)m.data + sizeof lens, *k2 = k1 + lens[0];
    tp_rkey *rk_reg = NULL, *rk_alloc = NULL, *rk_win = NULL, *bad = NULL;
    CHECK_OK(tp_rkey_import(ctx, 1, k1, lens[0], 0, &rk_reg));
    CHECK_OK(tp_rkey_import(ctx, 1, k2, lens[1], 0, &rk_alloc));
    uint64_t alloc_base;
    memcpy(&alloc_base, k2 + 8, sizeof alloc_base); /* blob: magic, len, base, ... */
    CHECK_OK(tp_rkey_import(ctx, 1, k2, lens[1], alloc_base + WINDOW_OFF, &rk_win));
    CHECK(tp_rkey_import(ctx, 1, k2, lens[1] - 1, 0, &bad) == MR_EPROTO, "truncated key");
    CHECK(tp_rkey_import(ctx, 1, k2, 4, 0, &bad) == MR_EPROTO, "tiny key");
    CHECK(tp_rkey_import(ctx, 1, k2, lens[1], alloc_base + ALLOC_LEN + 1, &bad) == MR_ERANGE,
          "window outside the region");
    tp_msg_free(&m);

    size_t n_reg = sizeof reg_spans / sizeof *reg_spans, n_alloc = sizeof alloc_spans / sizeof *alloc_spans;
    uint8_t *src[8];
    for (size_t i = 0; i < n_reg; i++) {
        src[i] = malloc(reg_spans[i].len);
        tpt_fill(src[i], reg_spans[i].len, 100 + i);
        CHECK_OK(tp_put(ctx, 1, rk_reg, reg_spans[i].off, src[i], reg_spans[i].len));
    }
    uint8_t small[1000], win[300];
    for (size_t i = 0; i < n_alloc; i++) {
        tpt_fill(small, alloc_spans[i].len, 200 + i);
        CHECK_OK(tp_put(ctx, 1, rk_alloc, alloc_spans[i].off, small, alloc_spans[i].len));
        CHECK_OK(tp_flush(ctx, 1, 10)); /* small is reused: flush before refilling */
    }
    tpt_fill(win, sizeof win, 200 + n_alloc);
    CHECK_OK(tp_put(ctx, 1, rk_win, 5, win, sizeof win));
    CHECK(tp_put(ctx, 1, rk_reg, REG_LEN - 10, small, 11) == MR_ERANGE, "put past the end");
    CHECK(tp_put(ctx, 1, rk_reg, UINT64_MAX - 2, small, 11) == MR_ERANGE, "offset overflow");
    CHECK(tp_put(ctx, 1, rk_win, ALLOC_LEN - WINDOW_OFF, small, 1) == MR_ERANGE, "window end");
    CHECK(tp_put(ctx, 0, rk_reg, 0, small, 1) == MR_EINVAL, "key used for the wrong peer");
    CHECK_OK(tp_flush(ctx, 1, 10));
    const tp_link_stats *s = tp_link(ctx, 1);
    CHECK(s->puts == n_reg + n_alloc + 1, "puts counted: %llu", (unsigned long long)s->puts);
    CHECK_OK(tp_send(ctx, 1, MSG_DONE, NULL, 0));
    m = tpt_recv(ctx, 15);
    CHECK(m.type == MSG_VERDICT, "verdict");
    tp_msg_free(&m);
    for (size_t i = 0; i < n_reg; i++) free(src[i]);
    tp_rkey_release(rk_reg);
    tp_rkey_release(rk_win);
    /* rk_alloc is left for tp_finalize to release */
}

int main(int argc, char **argv)
{
    tp_ctx *ctx = NULL;
    CHECK_OK(tp_init(&argc, &argv, TP_ROLE_OTHER, NULL, &ctx));
    tpt_rank = tp_rank(ctx);
    CHECK(tp_size(ctx) == 2, "size");
    if (tpt_rank == 0) rank0(ctx);
    else rank1(ctx);
    CHECK_OK(tp_finalize(ctx));
    tpt_pass(tpt_rank);
    return 0;
}
