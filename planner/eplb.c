#include "eplb.h"

#include <stdbool.h>
#include <string.h>

static double max_over_mean(const double *v, int n)
{
    double sum = 0, max = 0;
    for (int i = 0; i < n; i++) {
        sum += v[i];
        if (v[i] > max) max = v[i];
    }
    return sum > 0 ? max * n / sum : 0.0;
}

double mr_eplb_round_robin_imbalance(const uint64_t *load, int n_experts, int n_ranks)
{
    double per_rank[256] = {0};
    if (n_ranks <= 0 || n_ranks > 256) return 0.0;
    for (int e = 0; e < n_experts; e++) per_rank[e % n_ranks] += (double)load[e];
    return max_over_mean(per_rank, n_ranks);
}

double mr_eplb_imbalance(const mr_eplb_layer *l)
{
    return max_over_mean(l->rank_load, l->n_ranks);
}

mr_status mr_eplb_balance(const uint64_t *load, int n_experts, int n_ranks, int redundant,
                          mr_eplb_layer *out)
{
    if (n_experts <= 0 || n_experts > 1024 || n_ranks <= 0 || n_ranks > 256 || redundant < 0)
        return mr_fail(MR_EINVAL, "eplb: %d experts on %d ranks with %d redundant replicas "
                       "(limits: 1..1024 experts, 1..256 ranks)", n_experts, n_ranks, redundant);
    const int max_rep = n_ranks < MR_EPLB_MAX_REPLICAS ? n_ranks : MR_EPLB_MAX_REPLICAS;
    if (redundant > n_experts * (max_rep - 1))
        return mr_fail(MR_EINVAL, "eplb: %d redundant replicas cannot fit: at most %d replicas "
                       "per expert on %d ranks", redundant, max_rep, n_ranks);
    memset(out, 0, sizeof *out);
    out->n_experts = n_experts;
    out->n_ranks = n_ranks;

    /* 1. replicate the heaviest (load per replica) */
    for (int e = 0; e < n_experts; e++) out->replicas[e] = 1;
    for (int i = 0; i < redundant; i++) {
        int best = -1;
        for (int e = 0; e < n_experts; e++) {
            if (out->replicas[e] >= max_rep) continue;
            if (best < 0 || (double)load[e] / out->replicas[e] >
                                (double)load[best] / out->replicas[best])
                best = e;
        }
        out->replicas[best]++;
    }

    /* 2. pack replicas heaviest first into the least-loaded rank with room */
    const int slots = (n_experts + redundant + n_ranks - 1) / n_ranks;
    int used[256] = {0};
    int placed[1024] = {0};
    int total = n_experts + redundant;
    for (int k = 0; k < total; k++) {
        int best_e = -1;
        for (int e = 0; e < n_experts; e++) {
            if (placed[e] == out->replicas[e]) continue;
            double share = (double)load[e] / out->replicas[e];
            if (best_e < 0 || share > (double)load[best_e] / out->replicas[best_e]) best_e = e;
        }
        int best_r = -1;
        for (int r = 0; r < n_ranks; r++) {
            if (used[r] >= slots) continue;
            bool holds = false;
            for (int j = 0; j < placed[best_e]; j++) holds |= out->rank_of[best_e][j] == r;
            if (holds) continue;
            if (best_r < 0 || out->rank_load[r] < out->rank_load[best_r]) best_r = r;
        }
        if (best_r < 0)
            return mr_fail(MR_EINTERNAL, "eplb: no rank with room for expert %d", best_e);
        out->rank_of[best_e][placed[best_e]++] = best_r;
        used[best_r]++;
        out->rank_load[best_r] += (double)load[best_e] / out->replicas[best_e];
    }
    return MR_OK;
}
