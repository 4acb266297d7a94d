/* proto/wire.h — what travels between ranks after bootstrap.
 *
 * Control frames: one protobuf `Moerun__Frame` per transport message of type
 * MSG_CONTROL. mr_frame_pack() serializes into a malloc'd buffer;
 * mr_frame_unpack() checks the length against a cap BEFORE unpacking and
 * rejects garbage (protobuf-c returns NULL) and frames with no body, with a
 * message naming the sender. Free unpacked frames with mr_frame_free().
 *
 * Bulk tensors: an mr_bulk_hdr followed by n_rows int32 slots (not for
 * MSG_EP_ROWS), for dispatch kinds n_rows int32 expert ids, then n_rows ×
 * dim floats (not for MSG_EP_ROUTE / MSG_DISPATCH_IDS / MSG_COMBINE_IDS:
 * their rows travel separately, over a data plane). mr_bulk_view()
 * validates a received buffer completely (magic, kind, dims, exact length,
 * expert ids in range) before returning pointers into it; floats are read
 * through memcpy-safe aligned offsets (header 32 B, int arrays keep 4-byte
 * alignment, and transport buffers are malloc'd so they are 16-aligned).
 * See docs/PROTOCOL.md for the flow. Thread-compatible, no global state.
 */
#ifndef MR_WIRE_H
#define MR_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "moerun.pb-c.h"

enum {
    MSG_CONTROL = 16,
    MSG_DISPATCH = 17,     /* decode → expert */
    MSG_COMBINE = 18,      /* expert → decode */
    MSG_EP_ROUTE = 19,     /* prefill → prefill: which rows, for which experts (no rows) */
    MSG_EP_ROWS = 20,      /* prefill → prefill: rows only (the UCX EP data plane) */
    MSG_EP_NCCL_ID = 21,   /* prefill member 0 → the others: the NCCL plane's id (raw bytes) */
    /* --route-plane nccl (decode ↔ expert pairs; docs/PROTOCOL.md) */
    MSG_ROUTE_NCCL_ID = 22,   /* decode → expert: pair id + the decode's GPU (mr_route_pair_hello) */
    MSG_ROUTE_NCCL_ACK = 23,  /* expert → decode: pair accepted, or refused and why */
    MSG_DISPATCH_IDS = 24,    /* decode → expert: a dispatch whose rows follow over the pair */
    MSG_COMBINE_IDS = 25,     /* expert → decode: its answer's slots; rows follow over the pair */
    MSG_PAIR_ROWS = 26,       /* --route-plane test-pairs: a pair's rows as a message (raw floats) */
};

/* MSG_ROUTE_NCCL_ID body: the pair's NCCL id (NP_ID_BYTES) and where the
 * decode rank's GPU is ("hostname/PCI bus id", NUL-terminated), so the
 * expert rank can refuse a pair on its own GPU. MSG_ROUTE_NCCL_ACK body:
 * accepted (1/0) then a NUL-terminated reason when refused. */
#define MR_ROUTE_IDENTITY_MAX 192
typedef struct mr_route_pair_hello {
    unsigned char nccl_id[128];
    char identity[MR_ROUTE_IDENTITY_MAX];
    uint8_t test_pairs;   /* --route-plane test-pairs: rows as MSG_PAIR_ROWS, no NCCL */
    uint8_t pad[7];
} mr_route_pair_hello;
typedef struct mr_route_pair_ack {
    uint8_t accepted;
    char reason[255];
} mr_route_pair_ack;

/* mr_bulk_hdr.reserved of an MSG_EP_ROWS message: which exchange it is. */
enum { MR_EP_PHASE_DISPATCH = 1, MR_EP_PHASE_COMBINE = 2 };

/* Cap on a control frame (requests carry prompts: 1 MiB holds ~250k ids). */
#define MR_FRAME_MAX_BYTES (4u << 20)

mr_status mr_frame_pack(const Moerun__Frame *frame, uint8_t **out, size_t *out_len);
mr_status mr_frame_unpack(const void *data, size_t len, size_t cap, int src_rank,
                          Moerun__Frame **out);
void mr_frame_free(Moerun__Frame *frame); /* accepts NULL */

#define MR_BULK_MAGIC 0x4b4c424dU /* "MBLK" */

typedef struct mr_bulk_hdr {
    uint32_t magic;
    uint16_t kind;       /* the transport message type it travels as */
    uint16_t reserved;   /* MSG_EP_ROWS: MR_EP_PHASE_*; else 0 */
    int32_t layer;
    int32_t n_rows;
    int32_t dim;
    uint32_t reserved2;
    uint64_t seq;        /* sender's step / iteration number */
} mr_bulk_hdr;           /* 32 bytes */

typedef struct mr_bulk_view {
    mr_bulk_hdr hdr;
    const int32_t *slots;    /* (n_rows), NULL for MSG_EP_ROWS */
    const int32_t *experts;  /* (n_rows) dispatch kinds only, else NULL */
    const float *rows;       /* (n_rows, dim), NULL for MSG_EP_ROUTE */
} mr_bulk_view;

static inline int mr_bulk_has_slots(int kind) { return kind != MSG_EP_ROWS; }
static inline int mr_bulk_has_experts(int kind)
{
    return kind == MSG_DISPATCH || kind == MSG_EP_ROUTE || kind == MSG_DISPATCH_IDS;
}
static inline int mr_bulk_has_rows(int kind)
{
    return kind != MSG_EP_ROUTE && kind != MSG_DISPATCH_IDS && kind != MSG_COMBINE_IDS;
}

/* Bytes of a bulk message of n_rows entries (rows of dim floats where the
 * kind carries rows). */
size_t mr_bulk_size(int kind, int n_rows, int dim);

/* Write header + arrays into buf (mr_bulk_size bytes); returns pointers to
 * fill through view (slots/experts/rows are writable there). */
void mr_bulk_init(void *buf, int kind, int layer, int n_rows, int dim, uint64_t seq,
                  int32_t **slots, int32_t **experts, float **rows);

/* A dispatch-kind message (MSG_DISPATCH / MSG_EP_ROUTE / MSG_DISPATCH_IDS) of the routed
 * slots whose destination is dst: for each slot s with route[s] == dst, in
 * slot order, its slot id, expert_ids[s] and (MSG_DISPATCH) the hidden row
 * h[s / top_k] (h is (n_slots / top_k, dim); unused for MSG_EP_ROUTE).
 * Returns a malloc'd buffer of *size bytes, or NULL when out of memory. */
uint8_t *mr_bulk_pack_routed(int kind, int layer, uint64_t seq, const float *h, int dim,
                             int top_k, const int32_t *expert_ids, const int32_t *route,
                             int n_slots, int dst, size_t *size);

/* Validate a received buffer; n_layers / n_experts bound layer and expert ids. */
mr_status mr_bulk_view_of(const void *data, size_t len, int expect_kind, int dim, int n_layers,
                          int n_experts, int src_rank, mr_bulk_view *out);

#endif
