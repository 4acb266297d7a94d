/* expert_node/prepare.c — see prepare.h. */
#include "prepare.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/timer.h"

static bool wanted_and_missing(void *ctx, int layer, int expert)
{
    const ex_prepare *p = ctx;
    return mr_placement_holds(&p->table, layer, expert, p->rank) &&
           !p->held[(size_t)layer * p->n_experts + (size_t)expert];
}

static void *load_thread(void *arg)
{
    ex_prepare *p = arg;
    if (p->delay_ms > 0) {
        struct timespec ts = {p->delay_ms / 1000, (long)(p->delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    p->status = mr_model_load_routed(p->model_dir, wanted_and_missing, p, &p->loaded);
    if (p->status != MR_OK) snprintf(p->error, sizeof p->error, "%s", mr_last_error());
    p->seconds = mr_now() - p->started;
    atomic_store(&p->done, true);
    return NULL;
}

mr_status ex_prepare_start(ex_prepare *p, const mr_role *r, mr_placement *table, uint64_t epoch)
{
    const mr_weights *w = &r->model.weights;
    memset(p, 0, sizeof *p);
    p->held = calloc((size_t)w->n_layers * (size_t)w->n_experts + 1, 1);
    if (!p->held) {
        mr_placement_free(table);
        return mr_fail(MR_ENOMEM, "prepare: out of memory");
    }
    for (int l = 0; l < w->n_layers; l++)
        for (int e = 0; w->layers[l].experts && e < w->n_experts; e++)
            p->held[(size_t)l * w->n_experts + (size_t)e] = w->layers[l].experts[e].gate.w != NULL;
    p->table = *table;
    memset(table, 0, sizeof *table);
    p->epoch = epoch;
    p->n_experts = w->n_experts;
    p->rank = r->rank;
    p->delay_ms = r->opts.test_load_delay_ms;
    p->model_dir = r->opts.model_dir;
    p->started = mr_now();
    atomic_init(&p->done, false);
    int rc = pthread_create(&p->thread, NULL, load_thread, p);
    if (rc != 0) {
        mr_placement_free(&p->table);
        free(p->held);
        memset(p, 0, sizeof *p);
        return mr_fail(MR_EIO, "prepare: cannot start the loading thread (error %d)", rc);
    }
    p->running = true;
    return MR_OK;
}

bool ex_prepare_done(ex_prepare *p)
{
    return p->running && atomic_load(&p->done);
}

mr_status ex_prepare_finish(ex_prepare *p, mr_role *r, int *n)
{
    *n = 0;
    if (!p->running) return mr_fail(MR_EINTERNAL, "prepare: no load running");
    pthread_join(p->thread, NULL);
    mr_status st = p->status;
    if (st == MR_OK) {
        st = mr_role_adopt_experts(r, &p->loaded, n);
        if (st == MR_OK)
            MR_INFO("loaded %d experts in %.2f s in the background for placement epoch %llu", *n,
                    p->seconds, (unsigned long long)p->epoch);
    } else {
        mr_fail(st, "%s", p->error);
    }
    mr_placement_free(&p->table);
    free(p->held);
    p->held = NULL;
    p->running = false;
    return st;
}
