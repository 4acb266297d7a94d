#include "wire.h"

#include <stdlib.h>
#include <string.h>

mr_status mr_frame_pack(const Moerun__Frame *frame, uint8_t **out, size_t *out_len)
{
    size_t len = moerun__frame__get_packed_size(frame);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return mr_fail(MR_ENOMEM, "frame: out of memory (%zu bytes)", len);
    moerun__frame__pack(frame, buf);
    *out = buf;
    *out_len = len;
    return MR_OK;
}

mr_status mr_frame_unpack(const void *data, size_t len, size_t cap, int src_rank,
                          Moerun__Frame **out)
{
    *out = NULL;
    if (len > cap)
        return mr_fail(MR_EPROTO, "control frame from rank %d rejected: %zu bytes exceeds the "
                       "cap of %zu", src_rank, len, cap);
    Moerun__Frame *f = moerun__frame__unpack(NULL, len, data);
    if (!f)
        return mr_fail(MR_EPROTO, "control frame from rank %d rejected: not a valid protobuf "
                       "Frame (%zu bytes)", src_rank, len);
    if (f->body_case == MOERUN__FRAME__BODY__NOT_SET) {
        moerun__frame__free_unpacked(f, NULL);
        return mr_fail(MR_EPROTO, "control frame from rank %d rejected: empty body", src_rank);
    }
    *out = f;
    return MR_OK;
}

void mr_frame_free(Moerun__Frame *frame)
{
    if (frame) moerun__frame__free_unpacked(frame, NULL);
}

size_t mr_bulk_size(int kind, int n_rows, int dim)
{
    size_t ints = (size_t)mr_bulk_has_slots(kind) + (size_t)mr_bulk_has_experts(kind);
    size_t floats = mr_bulk_has_rows(kind) ? (size_t)dim : 0;
    return sizeof(mr_bulk_hdr) + (size_t)n_rows * (ints * sizeof(int32_t) + floats * sizeof(float));
}

/* Byte offsets of the arrays behind the header (absent arrays: empty). */
static void bulk_layout(int kind, int n_rows, size_t *slots_at, size_t *experts_at, size_t *rows_at)
{
    *slots_at = sizeof(mr_bulk_hdr);
    *experts_at = *slots_at + (mr_bulk_has_slots(kind) ? sizeof(int32_t) * (size_t)n_rows : 0);
    *rows_at = *experts_at + (mr_bulk_has_experts(kind) ? sizeof(int32_t) * (size_t)n_rows : 0);
}

void mr_bulk_init(void *buf, int kind, int layer, int n_rows, int dim, uint64_t seq,
                  int32_t **slots, int32_t **experts, float **rows)
{
    mr_bulk_hdr h = {MR_BULK_MAGIC, (uint16_t)kind, 0, layer, n_rows, dim, 0, seq};
    size_t s_at, e_at, r_at;
    memcpy(buf, &h, sizeof h);
    bulk_layout(kind, n_rows, &s_at, &e_at, &r_at);
    if (slots) *slots = mr_bulk_has_slots(kind) ? (int32_t *)(void *)((uint8_t *)buf + s_at) : NULL;
    if (experts) *experts = mr_bulk_has_experts(kind) ? (int32_t *)(void *)((uint8_t *)buf + e_at) : NULL;
    if (rows) *rows = mr_bulk_has_rows(kind) ? (float *)(void *)((uint8_t *)buf + r_at) : NULL;
}

uint8_t *mr_bulk_pack_routed(int kind, int layer, uint64_t seq, const float *h, int dim,
                             int top_k, const int32_t *expert_ids, const int32_t *route,
                             int n_slots, int dst, size_t *size)
{
    int n = 0;
    for (int s = 0; s < n_slots; s++) n += route[s] == dst;
    *size = mr_bulk_size(kind, n, dim);
    uint8_t *buf = malloc(*size);
    if (!buf) return NULL;
    int32_t *slots, *experts;
    float *rows;
    mr_bulk_init(buf, kind, layer, n, dim, seq, &slots, &experts, &rows);
    n = 0;
    for (int s = 0; s < n_slots; s++) {
        if (route[s] != dst) continue;
        slots[n] = s;
        experts[n] = expert_ids[s];
        if (rows)
            memcpy(rows + (size_t)n * dim, h + (size_t)(s / top_k) * dim,
                   sizeof(float) * (size_t)dim);
        n++;
    }
    return buf;
}

mr_status mr_bulk_view_of(const void *data, size_t len, int expect_kind, int dim, int n_layers,
                          int n_experts, int src_rank, mr_bulk_view *out)
{
    memset(out, 0, sizeof *out);
    if (len < sizeof(mr_bulk_hdr))
        return mr_fail(MR_EPROTO, "bulk message from rank %d rejected: %zu bytes is shorter "
                       "than its header", src_rank, len);
    mr_bulk_hdr h;
    memcpy(&h, data, sizeof h);
    if (h.magic != MR_BULK_MAGIC || h.kind != expect_kind)
        return mr_fail(MR_EPROTO, "bulk message from rank %d rejected: bad magic/kind "
                       "(0x%08x/%u, want kind %d)", src_rank, h.magic, h.kind, expect_kind);
    if (h.dim != dim || h.n_rows < 0 || h.layer < 0 || h.layer >= n_layers)
        return mr_fail(MR_EPROTO, "bulk message from rank %d rejected: layer %d, rows %d, dim %d "
                       "(model: %d layers, dim %d)", src_rank, h.layer, h.n_rows, h.dim, n_layers,
                       dim);
    if ((uint64_t)h.n_rows > (len / sizeof(float)) || mr_bulk_size(h.kind, h.n_rows, dim) != len)
        return mr_fail(MR_EPROTO, "bulk message from rank %d rejected: %zu bytes does not match "
                       "%d rows of dim %d", src_rank, len, h.n_rows, dim);
    size_t s_at, e_at, r_at;
    bulk_layout(h.kind, h.n_rows, &s_at, &e_at, &r_at);
    const uint8_t *base = data;
    const int32_t *slots =
        mr_bulk_has_slots(h.kind) ? (const int32_t *)(const void *)(base + s_at) : NULL;
    const int32_t *experts =
        mr_bulk_has_experts(h.kind) ? (const int32_t *)(const void *)(base + e_at) : NULL;
    const float *rows = mr_bulk_has_rows(h.kind) ? (const float *)(const void *)(base + r_at) : NULL;
    if (experts)
        for (int i = 0; i < h.n_rows; i++)
            if (experts[i] < 0 || experts[i] >= n_experts)
                return mr_fail(MR_EPROTO, "bulk message from rank %d rejected: expert id %d out of "
                               "range [0, %d)", src_rank, experts[i], n_experts);
    out->hdr = h;
    out->slots = slots;
    out->experts = experts;
    out->rows = rows;
    return MR_OK;
}
