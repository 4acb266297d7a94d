/* model/synth.c — random-weight DeepSeek-V3-family checkpoints in the release
 * format. Contract in synth.h.
 *
 * The preset becomes a config.json (cJSON) which is parsed back with
 * mr_config_parse, so the tensors written are exactly those the loader asks
 * for. Each tensor draws from its own splitmix64 stream seeded by (seed, name):
 * the values do not depend on dtype or sharding, so an fp8 model dequantizes
 * to its f32 twin within fp8 rounding. Data is generated and written in row
 * strips (128 rows for fp8 blocks) and never held whole.
 */
#include "synth.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "synth_internal.h"

#define SYNTH_STRIP_ELEMS 65536
#define SYNTH_NAME_MAX 160

/* ------------------------------------------------------------------ tensor list */

typedef enum { INIT_LINEAR, INIT_NORM, INIT_EMBED, INIT_BIAS, INIT_SCALE } synth_init;

typedef struct synth_tensor {
    char name[SYNTH_NAME_MAX];
    int ndim;
    int64_t shape[2];
    synth_init init;
    mr_dtype dtype;
    int shard;
    uint64_t nbytes;
} synth_tensor;

typedef struct synth_list {
    synth_tensor *items;
    size_t count, cap;
    mr_synth_dtype dtype;
    int unit;                      /* current shard unit: 0 embed, 1+l layer, L+1 final */
    int n_units, shards;
    mr_status status;
} synth_list;

/* Format a tensor-name prefix; a truncated name fails the list. */
static void list_name(synth_list *list, char *dst, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void list_name(synth_list *list, char *dst, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(dst, size, fmt, ap);
    va_end(ap);
    if ((len < 0 || (size_t)len >= size) && list->status == MR_OK)
        list->status = mr_fail(MR_EINTERNAL, "synth: tensor name %s... too long", dst);
}

static synth_tensor *list_add(synth_list *list, const char *prefix, const char *name, int ndim,
                              int64_t rows, int64_t cols, synth_init init, mr_dtype dtype)
{
    if (list->status != MR_OK)
        return NULL;
    if (list->count == list->cap) {
        size_t cap = list->cap ? 2 * list->cap : 256;
        synth_tensor *grown = realloc(list->items, cap * sizeof *grown);
        if (!grown) {
            list->status = mr_fail(MR_ENOMEM, "synth: out of memory");
            return NULL;
        }
        list->items = grown;
        list->cap = cap;
    }
    synth_tensor *t = &list->items[list->count++];
    memset(t, 0, sizeof *t);
    list_name(list, t->name, sizeof t->name, "%s%s", prefix, name);
    t->ndim = ndim;
    t->shape[0] = rows;
    t->shape[1] = ndim == 2 ? cols : 1;
    t->init = init;
    t->dtype = dtype;
    t->shard = (int)((int64_t)list->unit * list->shards / list->n_units);
    t->nbytes = (uint64_t)rows * (uint64_t)t->shape[1] * mr_dtype_size(dtype);
    return t;
}

/* Embeddings, norms, router, lm_head: BF16 unless f32. */
static mr_dtype plain_dtype(const synth_list *list)
{
    return list->dtype == MR_SYNTH_F32 ? MR_DT_F32 : MR_DT_BF16;
}

/* A *_proj weight; fp8 adds its _scale_inv right after it. */
static void add_proj(synth_list *list, const char *prefix, const char *proj, int rows, int cols)
{
    char name[SYNTH_NAME_MAX];
    list_name(list, name, sizeof name, "%s.weight", proj);
    if (list->dtype != MR_SYNTH_FP8) {
        list_add(list, prefix, name, 2, rows, cols, INIT_LINEAR, plain_dtype(list));
        return;
    }
    list_add(list, prefix, name, 2, rows, cols, INIT_LINEAR, MR_DT_F8_E4M3);
    list_name(list, name, sizeof name, "%s.weight_scale_inv", proj);
    list_add(list, prefix, name, 2, (rows + SYNTH_FP8_BLOCK - 1) / SYNTH_FP8_BLOCK,
             (cols + SYNTH_FP8_BLOCK - 1) / SYNTH_FP8_BLOCK, INIT_SCALE, MR_DT_F32);
}

static void add_mlp(synth_list *list, const char *prefix, int dim, int inner)
{
    add_proj(list, prefix, "gate_proj", inner, dim);
    add_proj(list, prefix, "up_proj", inner, dim);
    add_proj(list, prefix, "down_proj", dim, inner);
}

static void add_layer(synth_list *list, const mr_config *c, int l)
{
    int dim = c->hidden_size, heads = c->num_attention_heads;
    char prefix[SYNTH_NAME_MAX], sub[SYNTH_NAME_MAX];
    list_name(list, prefix, sizeof prefix, "model.layers.%d.", l);
    list_add(list, prefix, "input_layernorm.weight", 1, dim, 1, INIT_NORM, plain_dtype(list));
    list_name(list, sub, sizeof sub, "%sself_attn.", prefix);
    if (c->q_lora_rank > 0) {
        add_proj(list, sub, "q_a_proj", c->q_lora_rank, dim);
        list_add(list, sub, "q_a_layernorm.weight", 1, c->q_lora_rank, 1, INIT_NORM,
                 plain_dtype(list));
        add_proj(list, sub, "q_b_proj", heads * mr_config_qk_head_dim(c), c->q_lora_rank);
    } else {
        add_proj(list, sub, "q_proj", heads * mr_config_qk_head_dim(c), dim);
    }
    add_proj(list, sub, "kv_a_proj_with_mqa", mr_config_latent_dim(c), dim);
    list_add(list, sub, "kv_a_layernorm.weight", 1, c->kv_lora_rank, 1, INIT_NORM,
             plain_dtype(list));
    add_proj(list, sub, "kv_b_proj", heads * (c->qk_nope_head_dim + c->v_head_dim),
             c->kv_lora_rank);
    add_proj(list, sub, "o_proj", dim, heads * c->v_head_dim);
    list_add(list, prefix, "post_attention_layernorm.weight", 1, dim, 1, INIT_NORM,
             plain_dtype(list));

    list_name(list, sub, sizeof sub, "%smlp.", prefix);
    if (!mr_config_layer_is_moe(c, l)) {
        add_mlp(list, sub, dim, c->intermediate_size);
        return;
    }
    list_add(list, sub, "gate.weight", 2, c->n_routed_experts, dim, INIT_LINEAR,
             plain_dtype(list));
    if (c->topk_method == MR_TOPK_NOAUX_TC)
        list_add(list, sub, "gate.e_score_correction_bias", 1, c->n_routed_experts, 1,
                 INIT_BIAS, MR_DT_F32);
    for (int e = 0; e < c->n_routed_experts; e++) {
        char expert[SYNTH_NAME_MAX];
        list_name(list, expert, sizeof expert, "%sexperts.%d.", sub, e);
        add_mlp(list, expert, dim, c->moe_intermediate_size);
    }
    if (c->n_shared_experts > 0) {
        list_name(list, prefix, sizeof prefix, "%sshared_experts.", sub);
        add_mlp(list, prefix, dim, c->n_shared_experts * c->moe_intermediate_size);
    }
}

static mr_status build_list(const mr_config *c, synth_list *list)
{
    int dim = c->hidden_size;
    list->unit = 0;
    list_add(list, "", "model.embed_tokens.weight", 2, c->vocab_size, dim, INIT_EMBED,
             plain_dtype(list));
    for (int l = 0; l < c->num_hidden_layers; l++) {
        list->unit = l + 1;
        add_layer(list, c, l);
    }
    list->unit = c->num_hidden_layers + 1;
    list_add(list, "", "model.norm.weight", 1, dim, 1, INIT_NORM, plain_dtype(list));
    list_add(list, "", "lm_head.weight", 2, c->vocab_size, dim, INIT_LINEAR, plain_dtype(list));
    return list->status;
}

/* ------------------------------------------------------------------ values */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t tensor_seed(uint64_t seed, const char *name)
{
    uint64_t hash = 0xCBF29CE484222325ull;            /* FNV-1a */
    for (const char *s = name; *s; s++)
        hash = (hash ^ (uint8_t)*s) * 0x100000001B3ull;
    uint64_t state = seed ^ hash;
    return splitmix64(&state);
}

typedef struct synth_rng {
    uint64_t state;
    float lo, hi;
} synth_rng;

static synth_rng make_rng(const synth_tensor *t, uint64_t seed, float bias_offset)
{
    synth_rng rng = {.state = tensor_seed(seed, t->name), .lo = -1.0f, .hi = 1.0f};
    float bound;
    switch (t->init) {
    case INIT_LINEAR:
        bound = sqrtf(3.0f / (float)t->shape[1]);
        rng.lo = -bound;
        rng.hi = bound;
        break;
    case INIT_NORM:
        rng.lo = 0.9f;
        rng.hi = 1.1f;
        break;
    case INIT_BIAS:
        rng.lo = -0.1f + bias_offset;
        rng.hi = 0.1f + bias_offset;
        break;
    case INIT_EMBED:
    case INIT_SCALE:
        break;
    }
    return rng;
}

static void fill_uniform(synth_rng *rng, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float u = (float)(splitmix64(&rng->state) >> 40) * (1.0f / 16777216.0f);
        dst[i] = rng->lo + (rng->hi - rng->lo) * u;
    }
}

/* ------------------------------------------------------------------ writing */

typedef struct synth_writer {
    FILE *fp;
    const char *path;
    float *values;                 /* strip of generated values */
    void *encoded;                 /* strip encoded for the file */
    float *scales;                 /* fp8: the whole _scale_inv of the current weight */
    size_t strip_cap;              /* elements */
    uint64_t seed;
    float bias_offset;
    const mr_synth_opts *opts;     /* hot experts */
} synth_writer;

static mr_status write_bytes(synth_writer *wr, const void *data, size_t n)
{
    if (n > 0 && fwrite(data, 1, n, wr->fp) != n)
        return mr_fail(MR_EIO, "%s: write failed: %s", wr->path, strerror(errno));
    return MR_OK;
}

/* One fp8 strip [rows, cols]: per 128-column block scale = amax/448, codes = w/scale. */
static void quantize_strip(const float *values, int64_t rows, int64_t cols, uint8_t *codes,
                           float *scale_row)
{
    int64_t n_blocks = (cols + SYNTH_FP8_BLOCK - 1) / SYNTH_FP8_BLOCK;
    for (int64_t b = 0; b < n_blocks; b++) {
        int64_t j0 = b * SYNTH_FP8_BLOCK;
        int64_t j1 = j0 + SYNTH_FP8_BLOCK < cols ? j0 + SYNTH_FP8_BLOCK : cols;
        float amax = 0.0f;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = j0; j < j1; j++)
                amax = fmaxf(amax, fabsf(values[i * cols + j]));
        float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
        if (scale == 0.0f)
            scale = FLT_MIN;
        scale_row[b] = scale;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = j0; j < j1; j++)
                codes[i * cols + j] = mr_f32_to_fp8_e4m3(values[i * cols + j] / scale);
    }
}

static mr_status write_tensor(synth_writer *wr, const synth_tensor *t)
{
    int64_t rows = t->shape[0], cols = t->shape[1];
    if (t->init == INIT_SCALE)       /* produced by the weight written just before */
        return write_bytes(wr, wr->scales, (size_t)t->nbytes);

    synth_rng rng = make_rng(t, wr->seed, wr->bias_offset);
    int64_t strip_rows = t->dtype == MR_DT_F8_E4M3 ? SYNTH_FP8_BLOCK
                                                    : SYNTH_STRIP_ELEMS / cols;
    if (strip_rows < 1)
        strip_rows = 1;
    if ((size_t)(strip_rows * cols) > wr->strip_cap) {
        size_t cap = (size_t)(strip_rows * cols);
        float *values = realloc(wr->values, cap * sizeof *values);
        if (values)
            wr->values = values;
        void *encoded = values ? realloc(wr->encoded, cap * sizeof(float)) : NULL;
        if (!encoded)
            return mr_fail(MR_ENOMEM, "synth: out of memory for tensor %s", t->name);
        wr->encoded = encoded;
        wr->strip_cap = cap;
    }
    if (t->dtype == MR_DT_F8_E4M3) {
        int64_t n_scales = ((rows + SYNTH_FP8_BLOCK - 1) / SYNTH_FP8_BLOCK) *
                           ((cols + SYNTH_FP8_BLOCK - 1) / SYNTH_FP8_BLOCK);
        free(wr->scales);
        wr->scales = malloc((size_t)n_scales * sizeof *wr->scales);
        if (!wr->scales)
            return mr_fail(MR_ENOMEM, "synth: out of memory for tensor %s", t->name);
    }

    for (int64_t row = 0; row < rows; row += strip_rows) {
        int64_t n_rows = rows - row < strip_rows ? rows - row : strip_rows;
        size_t n = (size_t)(n_rows * cols);
        fill_uniform(&rng, wr->values, n);
        if (t->init == INIT_BIAS) /* one value per expert id */
            for (int h = 0; h < wr->opts->n_hot_experts; h++) {
                int64_t id = wr->opts->hot_experts[h];
                if (id >= row && id < row + n_rows) wr->values[id - row] += wr->opts->hot_bias;
            }
        size_t n_bytes = n * mr_dtype_size(t->dtype);
        if (t->dtype == MR_DT_F32) {
            MR_TRY(write_bytes(wr, wr->values, n_bytes)); /* little-endian host */
            continue;
        }
        if (t->dtype == MR_DT_BF16) {
            uint16_t *out = wr->encoded;
            for (size_t i = 0; i < n; i++)
                out[i] = mr_f32_to_bf16(wr->values[i]);
        } else {
            int64_t n_blocks = (cols + SYNTH_FP8_BLOCK - 1) / SYNTH_FP8_BLOCK;
            quantize_strip(wr->values, n_rows, cols, wr->encoded,
                           wr->scales + (row / SYNTH_FP8_BLOCK) * n_blocks);
        }
        MR_TRY(write_bytes(wr, wr->encoded, n_bytes));
    }
    return MR_OK;
}

static char *join(const char *dir, const char *name)
{
    size_t len = strlen(dir) + strlen(name) + 2;
    char *path = malloc(len);
    if (path)
        snprintf(path, len, "%s/%s", dir, name);
    return path;
}

/* Open `path`.tmp for writing; finish_file renames it into place. */
static mr_status start_file(const char *path, char **tmp_out, FILE **fp_out)
{
    size_t len = strlen(path) + 5;
    char *tmp = malloc(len);
    if (!tmp)
        return mr_fail(MR_ENOMEM, "synth: out of memory");
    snprintf(tmp, len, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        mr_status status = mr_fail(MR_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return status;
    }
    setvbuf(fp, NULL, _IOFBF, 1 << 20);
    *tmp_out = tmp;
    *fp_out = fp;
    return MR_OK;
}

static mr_status finish_file(const char *path, char *tmp, FILE *fp, mr_status status)
{
    if (fclose(fp) != 0 && status == MR_OK)
        status = mr_fail(MR_EIO, "%s: close failed: %s", tmp, strerror(errno));
    if (status == MR_OK && rename(tmp, path) != 0)
        status = mr_fail(MR_EIO, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
    if (status != MR_OK)
        unlink(tmp);
    free(tmp);
    return status;
}

static mr_status write_text_file(const char *path, const char *text)
{
    char *tmp = NULL;
    FILE *fp = NULL;
    MR_TRY(start_file(path, &tmp, &fp));
    size_t len = strlen(text);
    mr_status status = MR_OK;
    if (fwrite(text, 1, len, fp) != len || fputc('\n', fp) == EOF)
        status = mr_fail(MR_EIO, "%s: write failed: %s", tmp, strerror(errno));
    return finish_file(path, tmp, fp, status);
}

/* Header JSON of one shard, padded with spaces to a multiple of 8 bytes. */
static char *shard_header(const synth_list *list, int shard, size_t *len_out)
{
    cJSON *header = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(header, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t offset = 0;
    for (size_t i = 0; i < list->count; i++) {
        const synth_tensor *t = &list->items[i];
        if (t->shard != shard)
            continue;
        cJSON *entry = cJSON_AddObjectToObject(header, t->name);
        cJSON_AddStringToObject(entry, "dtype", mr_dtype_name(t->dtype));
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)(offset + t->nbytes)));
        offset += t->nbytes;
    }
    char *text = cJSON_PrintUnformatted(header);
    cJSON_Delete(header);
    if (!text)
        return NULL;
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memset(out + len, ' ', padded - len);
    out[padded] = '\0';
    *len_out = padded;
    return out;
}

static mr_status write_shard(synth_writer *wr, const synth_list *list, int shard,
                             const char *path)
{
    char *tmp = NULL;
    size_t header_len = 0;
    char *header = shard_header(list, shard, &header_len);
    if (!header)
        return mr_fail(MR_ENOMEM, "synth: out of memory for the header of %s", path);
    mr_status status = start_file(path, &tmp, &wr->fp);
    if (status != MR_OK) {
        free(header);
        return status;
    }
    wr->path = tmp;
    uint64_t len64 = header_len;         /* little-endian host (see safetensors.c) */
    status = write_bytes(wr, &len64, sizeof len64);
    if (status == MR_OK)
        status = write_bytes(wr, header, header_len);
    for (size_t i = 0; i < list->count && status == MR_OK; i++)
        if (list->items[i].shard == shard)
            status = write_tensor(wr, &list->items[i]);
    free(header);
    return finish_file(path, tmp, wr->fp, status);
}

static mr_status write_index(const char *out_dir, const synth_list *list)
{
    mr_status status = MR_OK;
    char *path = join(out_dir, "model.safetensors.index.json");
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    uint64_t total = 0;
    char file[64];
    for (size_t i = 0; i < list->count; i++) {
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", list->items[i].shard + 1,
                 list->shards);
        cJSON_AddStringToObject(map, list->items[i].name, file);
        total += list->items[i].nbytes;
    }
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    char *text = cJSON_Print(root);
    if (text)
        synth_hf_layout(&text);
    if (!path || !text)
        status = mr_fail(MR_ENOMEM, "synth: out of memory for the index");
    else
        status = write_text_file(path, text);
    free(text);
    cJSON_Delete(root);
    free(path);
    return status;
}

static mr_status make_dirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return mr_fail(MR_EINVAL, "synth: output path too long");
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return mr_fail(MR_EIO, "%s: cannot create directory: %s", path, strerror(errno));
        *p = saved;
        if (saved == '\0')
            break;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return mr_fail(MR_EIO, "%s: not a directory", dir);
    return MR_OK;
}

mr_status mr_synth_write(const char *out_dir, const mr_synth_opts *opts)
{
    mr_status status = MR_OK;
    mr_config cfg;
    char *config_text = NULL, *path = NULL;
    synth_list list = {0};
    synth_writer wr = {0};
    const char *preset = opts->preset ? opts->preset : "tiny";

    if (opts->dtype != MR_SYNTH_F32 && opts->dtype != MR_SYNTH_BF16 &&
        opts->dtype != MR_SYNTH_FP8)
        return mr_fail(MR_EINVAL, "synth: unknown dtype %d", (int)opts->dtype);
    MR_TRY(synth_preset_config(preset, opts->dtype, &cfg, &config_text));
    list.dtype = opts->dtype;
    list.shards = opts->shards;
    list.n_units = cfg.num_hidden_layers + 2;
    if (opts->shards < 1 || opts->shards > list.n_units) {
        status = mr_fail(MR_EINVAL, "synth: shards %d must be in 1..%d for preset %s",
                         opts->shards, list.n_units, preset);
        goto fail;
    }
    for (int h = 0; h < opts->n_hot_experts; h++) {
        if (opts->hot_experts[h] < 0 || opts->hot_experts[h] >= cfg.n_routed_experts) {
            status = mr_fail(MR_EINVAL, "synth: hot expert %d is not in [0, %d) for preset %s",
                             opts->hot_experts[h], cfg.n_routed_experts, preset);
            goto fail;
        }
    }
    if ((status = build_list(&cfg, &list)) != MR_OK || (status = make_dirs(out_dir)) != MR_OK)
        goto fail;

    wr.seed = opts->seed;
    wr.bias_offset = opts->gate_bias_offset;
    wr.opts = opts;
    for (int shard = 0; shard < opts->shards; shard++) {
        char file[64];
        if (opts->shards == 1)
            snprintf(file, sizeof file, "model.safetensors");
        else
            snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", shard + 1,
                     opts->shards);
        free(path);
        path = join(out_dir, file);
        if (!path) {
            status = mr_fail(MR_ENOMEM, "synth: out of memory");
            goto fail;
        }
        if ((status = write_shard(&wr, &list, shard, path)) != MR_OK)
            goto fail;
    }
    if (opts->shards > 1 && (status = write_index(out_dir, &list)) != MR_OK)
        goto fail;

    /* A previous run in the other layout must not shadow this one. */
    free(path);
    path = join(out_dir, opts->shards > 1 ? "model.safetensors" : "model.safetensors.index.json");
    if (path)
        unlink(path);
    free(path);
    path = join(out_dir, "config.json");
    if (!path) {
        status = mr_fail(MR_ENOMEM, "synth: out of memory");
        goto fail;
    }
    status = write_text_file(path, config_text);

fail:
    free(path);
    free(config_text);
    free(list.items);
    free(wr.values);
    free(wr.encoded);
    free(wr.scales);
    return status;
}
