#include "inject.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* The bulk kind a role accepts from others, so the frame reaches its parser. */
static uint16_t bulk_kind_for(tp_role role)
{
    switch (role) {
    case TP_ROLE_EXPERT: return MSG_DISPATCH;
    case TP_ROLE_PREFILL: return MSG_EP_ROUTE;
    default: return MSG_DISPATCH; /* decode: a type it must refuse */
    }
}

/* A well-formed Placement frame with a hostile table (wrong dims, a rank that
 * is not an expert rank, a negative replica count): expert and decode ranks
 * must refuse it and keep serving with the placement they have. */
static int send_bad_placement(mr_role *r, int dst, tp_role role)
{
    int32_t counts[4] = {1, -3, 9, 1}, ranks[3] = {0, 999, -1};
    Moerun__Placement p = MOERUN__PLACEMENT__INIT;
    p.epoch = 424242;
    p.phase = role == TP_ROLE_EXPERT ? MOERUN__PLACEMENT_PHASE__PLACEMENT_PREPARE
                                     : MOERUN__PLACEMENT_PHASE__PLACEMENT_SWITCH;
    p.n_layers = 2;
    p.n_experts = 2;
    p.n_n_replicas = 4;
    p.n_replicas = counts;
    p.n_ranks = 3;
    p.ranks = ranks;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_PLACEMENT;
    f.placement = &p;
    return mr_role_send_frame(r, dst, &f) == MR_OK;
}

int mr_inject_garbage(mr_role *r, int n_each)
{
    const size_t big = MR_FRAME_MAX_BYTES + 1;
    uint8_t *buf = calloc(big, 1);
    if (!buf) return 0;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < 256; i++) { /* deterministic junk */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    int sent = 0;
    for (int dst = 0; dst < tp_size(r->tp); dst++) {
        if (dst == r->rank) continue;
        uint16_t bulk = bulk_kind_for(tp_peer_info(r->tp, dst)->role);
        for (int i = 0; i < n_each; i++) {
            sent += tp_send(r->tp, dst, MSG_CONTROL, buf, 200) == MR_OK;  /* not protobuf */
            sent += tp_send(r->tp, dst, MSG_CONTROL, buf, big) == MR_OK;  /* over the cap */
            sent += tp_send(r->tp, dst, bulk, buf, 100) == MR_OK;         /* bad magic */
            tp_role role = tp_peer_info(r->tp, dst)->role;
            if (role == TP_ROLE_EXPERT || role == TP_ROLE_DECODE)
                sent += send_bad_placement(r, dst, role); /* valid frame, hostile table */
            if (role == TP_ROLE_EXPERT) { /* the --route-plane nccl messages */
                sent += tp_send(r->tp, dst, MSG_ROUTE_NCCL_ID, buf, 100) == MR_OK; /* short */
                sent += tp_send(r->tp, dst, MSG_DISPATCH_IDS, buf, 100) == MR_OK;  /* bad magic */
                sent += tp_send(r->tp, dst, MSG_PAIR_ROWS, buf, 100) == MR_OK;     /* no pair */
            }
        }
    }
    free(buf);
    MR_INFO("test hook: sent %d malformed frames to the other ranks", sent);
    return sent;
}
