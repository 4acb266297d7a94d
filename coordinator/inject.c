#include "inject.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* The bulk kind a role accepts from others, so the frame reaches its parser. */
static uint16_t bulk_kind_for(tp_role role)
{
    switch (role) {
    case TP_ROLE_EXPERT: return MSG_DISPATCH;
    case TP_ROLE_PREFILL: return MSG_EP_DISPATCH;
    default: return MSG_DISPATCH; /* decode: a type it must refuse */
    }
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
        }
    }
    free(buf);
    MR_INFO("test hook: sent %d malformed frames to the other ranks", sent);
    return sent;
}
