#include "kvcache.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mr_kv_pool {
    int n_layers;
    int latent_dim;
    int block_tokens;
    int n_blocks;
    mr_wtype dtype;          /* element type of the rows */
    char *data;
    bool owns_data;
    int32_t *free_stack;
    int n_free;
    uint8_t *in_use;
};

size_t mr_kv_pool_bytes_for(int n_layers, int latent_dim, int block_tokens, int n_blocks,
                            mr_wtype dtype)
{
    return mr_wtype_size(dtype) * (size_t)n_blocks * n_layers * block_tokens * latent_dim;
}

static mr_status pool_create(int n_layers, int latent_dim, int block_tokens, int n_blocks,
                             mr_wtype dtype, void *storage, mr_kv_pool **out)
{
    *out = NULL;
    if (n_layers <= 0 || latent_dim <= 0 || block_tokens <= 0 || n_blocks <= 0)
        return mr_fail(MR_EINVAL, "KV pool: sizes must be positive (layers %d, latent %d, "
                       "block_tokens %d, blocks %d)", n_layers, latent_dim, block_tokens, n_blocks);
    if ((int64_t)n_blocks * n_layers * block_tokens > INT32_MAX)
        return mr_fail(MR_EINVAL, "KV pool: %d blocks x %d layers x %d tokens exceeds 2^31 rows",
                       n_blocks, n_layers, block_tokens);
    mr_kv_pool *pool = calloc(1, sizeof *pool);
    if (!pool) goto fail;
    pool->n_layers = n_layers;
    pool->latent_dim = latent_dim;
    pool->block_tokens = block_tokens;
    pool->n_blocks = n_blocks;
    pool->dtype = dtype;
    pool->owns_data = storage == NULL;
    pool->data = storage ? storage
                         : calloc(mr_kv_pool_bytes_for(n_layers, latent_dim, block_tokens, n_blocks,
                                                       dtype), 1);
    pool->free_stack = malloc(sizeof(int32_t) * (size_t)n_blocks);
    pool->in_use = calloc((size_t)n_blocks, 1);
    if (!pool->data || !pool->free_stack || !pool->in_use) goto fail;
    /* lowest block ids on top of the stack */
    for (int i = 0; i < n_blocks; i++) pool->free_stack[i] = n_blocks - 1 - i;
    pool->n_free = n_blocks;
    *out = pool;
    return MR_OK;
fail:
    mr_kv_pool_destroy(pool);
    return mr_fail(MR_ENOMEM, "KV pool: cannot allocate %d blocks of %d tokens", n_blocks,
                   block_tokens);
}

mr_status mr_kv_pool_create(int n_layers, int latent_dim, int block_tokens, int n_blocks,
                            mr_kv_pool **out)
{
    return pool_create(n_layers, latent_dim, block_tokens, n_blocks, MR_WT_F32, NULL, out);
}

mr_status mr_kv_pool_create_in(int n_layers, int latent_dim, int block_tokens, int n_blocks,
                               mr_wtype dtype, void *storage, mr_kv_pool **out)
{
    if (!storage) return mr_fail(MR_EINVAL, "KV pool: no storage given");
    return pool_create(n_layers, latent_dim, block_tokens, n_blocks, dtype, storage, out);
}

void mr_kv_pool_destroy(mr_kv_pool *pool)
{
    if (!pool) return;
    if (pool->owns_data) free(pool->data);
    free(pool->free_stack);
    free(pool->in_use);
    free(pool);
}

int mr_kv_pool_block_tokens(const mr_kv_pool *pool) { return pool->block_tokens; }
int mr_kv_pool_free_blocks(const mr_kv_pool *pool) { return pool->n_free; }
int mr_kv_pool_total_blocks(const mr_kv_pool *pool) { return pool->n_blocks; }

mr_wtype mr_kv_pool_dtype(const mr_kv_pool *pool) { return pool->dtype; }

size_t mr_kv_pool_block_bytes(const mr_kv_pool *pool)
{
    return mr_wtype_size(pool->dtype) * (size_t)pool->n_layers * pool->block_tokens *
           pool->latent_dim;
}

void *mr_kv_pool_block(mr_kv_pool *pool, int32_t block)
{
    return pool->data + (size_t)block * mr_kv_pool_block_bytes(pool);
}

int mr_kv_pool_blocks_for(const mr_kv_pool *pool, int n_tokens)
{
    return (n_tokens + pool->block_tokens - 1) / pool->block_tokens;
}

mr_status mr_kv_pool_alloc(mr_kv_pool *pool, int n, int32_t *out_blocks)
{
    if (n < 0) return mr_fail(MR_EINVAL, "KV pool: negative block count %d", n);
    if (n > pool->n_free)
        return mr_fail(MR_ENOMEM, "KV pool exhausted: need %d blocks, %d of %d free", n,
                       pool->n_free, pool->n_blocks);
    for (int i = 0; i < n; i++) {
        int32_t b = pool->free_stack[--pool->n_free];
        pool->in_use[b] = 1;
        out_blocks[i] = b;
    }
    return MR_OK;
}

mr_status mr_kv_pool_release(mr_kv_pool *pool, int n, const int32_t *blocks)
{
    mr_status st = MR_OK;
    for (int i = 0; i < n; i++) {
        int32_t b = blocks[i];
        if (b < 0 || b >= pool->n_blocks || !pool->in_use[b]) {
            st = mr_fail(MR_EINTERNAL, "KV pool: release of block %d that is not allocated", b);
            continue;
        }
        pool->in_use[b] = 0;
        pool->free_stack[pool->n_free++] = b;
    }
    return st;
}

void mr_kv_seq_init(mr_kv_seq *seq, mr_kv_pool *pool)
{
    memset(seq, 0, sizeof *seq);
    seq->pool = pool;
}

mr_status mr_kv_seq_reserve(mr_kv_seq *seq, int n_tokens)
{
    int need = mr_kv_pool_blocks_for(seq->pool, n_tokens);
    if (need <= seq->n_blocks) return MR_OK;
    if (need > seq->cap_blocks) {
        int cap = seq->cap_blocks ? seq->cap_blocks : 4;
        while (cap < need) cap *= 2;
        int32_t *grown = realloc(seq->blocks, sizeof(int32_t) * (size_t)cap);
        if (!grown) return mr_fail(MR_ENOMEM, "KV block table: out of memory");
        seq->blocks = grown;
        seq->cap_blocks = cap;
    }
    MR_TRY(mr_kv_pool_alloc(seq->pool, need - seq->n_blocks, seq->blocks + seq->n_blocks));
    seq->n_blocks = need;
    return MR_OK;
}

mr_status mr_kv_seq_release(mr_kv_seq *seq)
{
    mr_status st = MR_OK;
    if (seq->pool && seq->n_blocks) st = mr_kv_pool_release(seq->pool, seq->n_blocks, seq->blocks);
    free(seq->blocks);
    seq->blocks = NULL;
    seq->n_blocks = seq->cap_blocks = 0;
    return st;
}

void *mr_kv_seq_row(const mr_kv_seq *seq, int layer, int pos)
{
    const mr_kv_pool *pool = seq->pool;
    int32_t block = seq->blocks[pos / pool->block_tokens];
    size_t offset = ((size_t)layer * pool->block_tokens + (size_t)(pos % pool->block_tokens)) *
                    pool->latent_dim * mr_wtype_size(pool->dtype);
    return (char *)mr_kv_pool_block(seq->pool, block) + offset;
}

void *mr_kv_pool_storage(mr_kv_pool *pool)
{
    return pool->data;
}

int32_t mr_kv_seq_row_index(const mr_kv_seq *seq, int pos)
{
    const mr_kv_pool *pool = seq->pool;
    int32_t block = seq->blocks[pos / pool->block_tokens];
    return block * pool->n_layers * pool->block_tokens + pos % pool->block_tokens;
}
