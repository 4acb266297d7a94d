/* coordinator/scheduler.c — rank choice from load accounting. Contract in scheduler.h. */
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

mr_status mr_sched_init(mr_sched *s, const int *prefill_ranks, int n_prefill,
                        const int *decode_ranks, int n_decode, int kv_blocks, int block_tokens)
{
    memset(s, 0, sizeof *s);
    if (n_prefill < 0 || n_decode < 0 || block_tokens < 1 || kv_blocks < 0)
        return mr_fail(MR_EINVAL, "scheduler: bad sizes (prefill %d, decode %d, blocks %d x %d)",
                       n_prefill, n_decode, kv_blocks, block_tokens);
    s->prefill = calloc((size_t)(n_prefill > 0 ? n_prefill : 1), sizeof *s->prefill);
    s->decode = calloc((size_t)(n_decode > 0 ? n_decode : 1), sizeof *s->decode);
    if (!s->prefill || !s->decode) {
        mr_sched_free(s);
        return mr_fail(MR_ENOMEM, "scheduler: out of memory");
    }
    for (int i = 0; i < n_prefill; i++)
        s->prefill[i] = (mr_sched_prefill){prefill_ranks[i], true, 0, -1};
    for (int i = 0; i < n_decode; i++)
        s->decode[i] = (mr_sched_decode){decode_ranks[i], true, kv_blocks, 0, -1, 0, 0};
    s->n_prefill = n_prefill;
    s->n_decode = n_decode;
    s->block_tokens = block_tokens;
    return MR_OK;
}

void mr_sched_free(mr_sched *s)
{
    if (!s) return;
    free(s->prefill);
    free(s->decode);
    memset(s, 0, sizeof *s);
}

int mr_sched_blocks_for(const mr_sched *s, int prompt_tokens, int max_new_tokens)
{
    int64_t tokens = (int64_t)prompt_tokens + max_new_tokens;
    return (int)((tokens + s->block_tokens - 1) / s->block_tokens);
}

int mr_sched_decode_free(const mr_sched_decode *d)
{
    int own = d->pool_blocks - d->reserved_blocks;
    if (d->reported_free < 0) return own;
    int reported = d->reported_free - d->admitted_since_report;
    return reported < own ? reported : own;
}

int mr_sched_max_pool(const mr_sched *s)
{
    int best = 0;
    for (int i = 0; i < s->n_decode; i++)
        if (s->decode[i].alive && s->decode[i].pool_blocks > best) best = s->decode[i].pool_blocks;
    return best;
}

mr_status mr_sched_pick(const mr_sched *s, int blocks, int *prefill_rank, int *decode_rank)
{
    const mr_sched_decode *best_d = NULL;
    if (mr_sched_live_decode(s) == 0) return mr_fail(MR_EPEER, "no live decode rank");
    for (int i = 0; i < s->n_decode; i++) {
        const mr_sched_decode *d = &s->decode[i];
        if (!d->alive || d->pool_blocks < blocks) continue;
        if (!best_d || mr_sched_decode_free(d) > mr_sched_decode_free(best_d) ||
            (mr_sched_decode_free(d) == mr_sched_decode_free(best_d) && d->rank < best_d->rank))
            best_d = d;
    }
    if (!best_d)
        return mr_fail(MR_ERANGE, "request needs %d KV blocks (%d tokens per block) but a "
                       "decode pool holds %d", blocks, s->block_tokens, mr_sched_max_pool(s));
    const mr_sched_prefill *best_p = NULL;
    for (int i = 0; i < s->n_prefill; i++) {
        const mr_sched_prefill *p = &s->prefill[i];
        if (!p->alive) continue;
        if (!best_p || p->queued_tokens < best_p->queued_tokens ||
            (p->queued_tokens == best_p->queued_tokens && p->rank < best_p->rank))
            best_p = p;
    }
    if (!best_p) return mr_fail(MR_EPEER, "no live prefill rank");
    *prefill_rank = best_p->rank;
    *decode_rank = best_d->rank;
    return MR_OK;
}

static mr_sched_decode *find_decode(mr_sched *s, int rank)
{
    for (int i = 0; i < s->n_decode; i++)
        if (s->decode[i].rank == rank) return &s->decode[i];
    return NULL;
}

static mr_sched_prefill *find_prefill(mr_sched *s, int rank)
{
    for (int i = 0; i < s->n_prefill; i++)
        if (s->prefill[i].rank == rank) return &s->prefill[i];
    return NULL;
}

void mr_sched_admit(mr_sched *s, int prefill_rank, int decode_rank, int prompt_tokens, int blocks)
{
    mr_sched_prefill *p = find_prefill(s, prefill_rank);
    if (p) p->queued_tokens += prompt_tokens;
    mr_sched_decode *d = find_decode(s, decode_rank);
    if (d) {
        d->reserved_blocks += blocks;
        d->admitted_since_report += blocks;
    }
}

void mr_sched_prefill_done(mr_sched *s, int prefill_rank, int prompt_tokens)
{
    mr_sched_prefill *p = find_prefill(s, prefill_rank);
    if (!p) return;
    p->queued_tokens -= prompt_tokens;
    if (p->queued_tokens < 0) p->queued_tokens = 0;
}

void mr_sched_release_decode(mr_sched *s, int decode_rank, int blocks)
{
    mr_sched_decode *d = find_decode(s, decode_rank);
    if (!d) return;
    d->reserved_blocks -= blocks;
    if (d->reserved_blocks < 0) d->reserved_blocks = 0;
}

void mr_sched_on_status(mr_sched *s, int rank, int free_kv_blocks, int total_kv_blocks,
                        int queued_tokens, int running)
{
    mr_sched_decode *d = find_decode(s, rank);
    if (d) {
        if (total_kv_blocks > 0) d->pool_blocks = total_kv_blocks;
        d->reported_free = free_kv_blocks >= 0 ? free_kv_blocks : 0;
        d->admitted_since_report = 0;
        d->running = running;
        return;
    }
    mr_sched_prefill *p = find_prefill(s, rank);
    if (p) p->reported_queued = queued_tokens;
}

bool mr_sched_mark_dead(mr_sched *s, int rank)
{
    mr_sched_decode *d = find_decode(s, rank);
    if (d) {
        bool was = d->alive;
        d->alive = false;
        return was;
    }
    mr_sched_prefill *p = find_prefill(s, rank);
    if (p) {
        bool was = p->alive;
        p->alive = false;
        return was;
    }
    return false;
}

int mr_sched_live_decode(const mr_sched *s)
{
    int n = 0;
    for (int i = 0; i < s->n_decode; i++) n += s->decode[i].alive;
    return n;
}

int mr_sched_live_prefill(const mr_sched *s)
{
    int n = 0;
    for (int i = 0; i < s->n_prefill; i++) n += s->prefill[i].alive;
    return n;
}
