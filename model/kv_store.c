/* model/kv_store.c — see kv_store.h. */
#include "kv_store.h"

#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "weights.h"

mr_status mr_kv_store_create(const mr_kernels *k, int n_layers, int latent_dim, int block_tokens,
                             int n_blocks, mr_wtype dtype, void *host_image, mr_kv_store *out)
{
    memset(out, 0, sizeof *out);
    out->k = k;
    size_t bytes = mr_kv_pool_bytes_for(n_layers, latent_dim, block_tokens, n_blocks, dtype);
    mr_status st = MR_OK;
    if (!k->host_memory)
        MR_TRY(mr_backend_check_fits(k, bytes, "the KV pool's blocks",
                                     dtype == MR_WT_BF16 ? "lower --kv-blocks"
                                                         : "lower --kv-blocks or --kv-dtype bf16"));
    if (host_image) {
        out->host = host_image;
        if (!k->host_memory) {
            /* pinned staging copies faster; pageable still works */
            if (k->host_register(host_image, bytes) == MR_OK)
                out->host_registered = 1;
            else
                MR_WARN("KV host image stays pageable (copies slower): %s", mr_last_error());
        }
    } else {
        out->host = k->host_alloc(bytes);
        out->host_owned = 1;
        if (!out->host) st = mr_fail(MR_ENOMEM, "KV store: cannot allocate %zu bytes", bytes);
        else memset(out->host, 0, bytes);
    }
    void *storage = out->host;
    if (st == MR_OK && !k->host_memory) {
        out->backend_storage = k->alloc(bytes);
        if (!out->backend_storage)
            st = mr_fail(MR_ENOMEM, "KV store: %s backend cannot allocate %zu bytes", k->name,
                         bytes);
        storage = out->backend_storage;
    }
    if (st == MR_OK)
        st = mr_kv_pool_create_in(n_layers, latent_dim, block_tokens, n_blocks, dtype, storage,
                                  &out->pool);
    if (st != MR_OK) mr_kv_store_destroy(out);
    return st;
}

void mr_kv_store_destroy(mr_kv_store *s)
{
    mr_kv_pool_destroy(s->pool);
    if (s->backend_storage) s->k->free(s->backend_storage);
    if (s->host_registered) s->k->host_unregister(s->host);
    if (s->host_owned) s->k->host_free(s->host);
    memset(s, 0, sizeof *s);
}

void *mr_kv_store_host_block(const mr_kv_store *s, int32_t block)
{
    return (char *)s->host + (size_t)block * mr_kv_pool_block_bytes(s->pool);
}

static mr_status move_blocks(const mr_kv_store *s, int n, const int32_t *blocks, int direction)
{
    if (s->k->host_memory) return MR_OK;
    const size_t bytes = mr_kv_pool_block_bytes(s->pool);
    char *dev = s->backend_storage;
    for (int i = 0; i < n; i++) {
        char *d = dev + (size_t)blocks[i] * bytes;
        char *h = (char *)mr_kv_store_host_block(s, blocks[i]);
        if (direction == MR_COPY_H2D)
            s->k->copy(d, h, bytes, MR_COPY_H2D);
        else
            s->k->copy(h, d, bytes, MR_COPY_D2H);
    }
    return s->k->check();
}

mr_status mr_kv_store_upload(const mr_kv_store *s, int n, const int32_t *blocks)
{
    return move_blocks(s, n, blocks, MR_COPY_H2D);
}

mr_status mr_kv_store_download(const mr_kv_store *s, int n, const int32_t *blocks)
{
    return move_blocks(s, n, blocks, MR_COPY_D2H);
}
