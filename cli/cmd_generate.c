/* cli/cmd_generate.c — `moerun generate`: the single-process engine.
 *
 * Contract (other programs and tests depend on it exactly):
 *   moerun generate [--model DIR] --prompt-ids 1,17,923 --max-new-tokens N
 *       [--temperature 0] [--top-p 1] [--top-k 0] [--seed 0]
 *       [--attn absorb|naive] [--ignore-eos] [--logits-out FILE.npy]
 *       [--backend cpu|cuda|devsim] [--precision fp32|bf16]
 * The generated ids go comma-separated on the last line of stdout; everything
 * else goes to stderr. --logits-out writes (S+G-1, vocab) float32 rows: the
 * prompt's logits at every position (one causal prefill pass), then each
 * incremental decode step's logits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/log.h"
#include "../common/npy.h"
#include "../common/timer.h"
#include "../kernels/backend.h"
#include "../kernels/cuda/kernels_cuda.h"
#include "../model/engine.h"
#include "../model/kv_store.h"
#include "../model/model.h"
#include "../model/sampler.h"
#include "commands.h"

typedef struct generate_args {
    const char *model_dir;
    int32_t *prompt;
    int n_prompt;
    int max_new_tokens;
    mr_sampling_params sampling;
    mr_attn_mode attn;
    int ignore_eos;
    const char *logits_out;
    const char *backend;
    bool bf16;
    mr_wtype kv_dtype;
} generate_args;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: moerun generate [--model DIR] --prompt-ids 1,17,923 --max-new-tokens N\n"
            "                       [--temperature 0] [--top-p 1] [--top-k 0] [--seed 0]\n"
            "                       [--attn absorb|naive] [--ignore-eos] [--logits-out FILE.npy]\n"
            "                       [--backend cpu|cuda|devsim] [--precision fp32|bf16]\n"
            "                       [--kv-dtype fp32|bf16]\n"
            "\n"
            "--backend cuda runs on GPU (local rank mod GPU count); --precision fp32 gives the\n"
            "CPU's tokens; bf16 stores weight matrices as bfloat16 (half the memory) and\n"
            "rounds their GEMM inputs to bfloat16, fp32 accumulate (on cpu and devsim an exact\n"
            "emulation of the GPU's BF16 GEMMs). --kv-dtype bf16 keeps the latent KV cache\n"
            "in bfloat16 (half the memory; rows rounded when written). devsim runs\n"
            "the CPU kernels under GPU memory rules (tests the GPU data paths without a GPU).\n"
            "Without --model the built-in tiny synthetic model is used.\n"
            "Prints the generated token ids, comma-separated, on the last line of stdout.\n");
}

static mr_status parse_args(int argc, char **argv, generate_args *a, int *want_help)
{
    memset(a, 0, sizeof *a);
    a->sampling.top_p = 1.0f;
    a->backend = "cpu";
    a->max_new_tokens = -1;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            *want_help = 1;
            return MR_OK;
        }
        if (!strcmp(flag, "--ignore-eos")) {
            a->ignore_eos = 1;
            continue;
        }
        if (strncmp(flag, "--", 2) != 0) return mr_fail(MR_EINVAL, "unexpected argument '%s'", flag);
        if (i + 1 >= argc) return mr_fail(MR_EINVAL, "%s: missing value", flag);
        const char *val = argv[++i];
        if (!strcmp(flag, "--model")) {
            a->model_dir = val;
        } else if (!strcmp(flag, "--prompt-ids")) {
            free(a->prompt);
            MR_TRY(mr_parse_id_list(flag, val, &a->prompt, &a->n_prompt));
        } else if (!strcmp(flag, "--max-new-tokens")) {
            MR_TRY(mr_parse_int(flag, val, 1, 100000000, &a->max_new_tokens));
        } else if (!strcmp(flag, "--temperature")) {
            MR_TRY(mr_parse_float(flag, val, 0.0, 1e6, &a->sampling.temperature));
        } else if (!strcmp(flag, "--top-p")) {
            MR_TRY(mr_parse_float(flag, val, 1e-9, 1.0, &a->sampling.top_p));
        } else if (!strcmp(flag, "--top-k")) {
            MR_TRY(mr_parse_int(flag, val, 0, 100000000, &a->sampling.top_k));
        } else if (!strcmp(flag, "--seed")) {
            MR_TRY(mr_parse_u64(flag, val, &a->sampling.seed));
        } else if (!strcmp(flag, "--attn")) {
            if (!strcmp(val, "absorb")) a->attn = MR_ATTN_ABSORB;
            else if (!strcmp(val, "naive")) a->attn = MR_ATTN_NAIVE;
            else return mr_fail(MR_EINVAL, "--attn: expected absorb or naive, got '%s'", val);
        } else if (!strcmp(flag, "--backend")) {
            if (!mr_backend_name_valid(val))
                return mr_fail(MR_EINVAL, "--backend: expected cpu, cuda or devsim, got '%s'", val);
            a->backend = val;
        } else if (!strcmp(flag, "--precision")) {
            mr_wtype t;
            MR_TRY(mr_parse_dtype(flag, val, &t));
            a->bf16 = t == MR_WT_BF16;
        } else if (!strcmp(flag, "--kv-dtype")) {
            MR_TRY(mr_parse_dtype(flag, val, &a->kv_dtype));
        } else if (!strcmp(flag, "--logits-out")) {
            a->logits_out = val;
        } else {
            return mr_fail(MR_EINVAL, "unknown flag '%s'", flag);
        }
    }
    if (!a->prompt) return mr_fail(MR_EINVAL, "--prompt-ids is required");
    if (a->max_new_tokens < 0) return mr_fail(MR_EINVAL, "--max-new-tokens is required");
    return MR_OK;
}

/* Check the request against the model before any compute. */
static mr_status validate_request(const mr_config *cfg, generate_args *a)
{
    for (int i = 0; i < a->n_prompt; i++)
        if (a->prompt[i] >= cfg->vocab_size)
            return mr_fail(MR_ERANGE, "--prompt-ids: token id %d at position %d is out of range "
                           "(vocab_size %d)", a->prompt[i], i + 1, cfg->vocab_size);
    if (a->n_prompt > cfg->max_position_embeddings)
        return mr_fail(MR_ERANGE, "prompt of %d tokens is longer than max_position_embeddings %d",
                       a->n_prompt, cfg->max_position_embeddings);
    /* positions fed are 0 .. S+G-2, all must be < max_position_embeddings */
    int room = cfg->max_position_embeddings - a->n_prompt + 1;
    if (a->max_new_tokens > room) {
        MR_WARN("--max-new-tokens %d capped to %d by max_position_embeddings %d",
                a->max_new_tokens, room, cfg->max_position_embeddings);
        a->max_new_tokens = room;
    }
    return MR_OK;
}

static mr_status run_generate(generate_args *a, int32_t **out_ids, int *n_out)
{
    mr_model model;
    mr_engine *engine = NULL;
    mr_kv_store kv = {0};
    mr_kv_seq seq = {0};
    const mr_kernels *k = NULL;
    mr_sampler sampler;
    mr_npy_writer npy = {0};
    float *logits = NULL;
    int32_t *ids = NULL;
    int32_t *positions = NULL;
    mr_kv_seq **seqs = NULL;
    int n_gen = 0;
    mr_status st;

    if ((st = mr_backend_open(a->backend, a->bf16, &k)) != MR_OK) return st;
    double t_load = mr_now();
    st = mr_model_load(a->model_dir, NULL, NULL, &model);
    if (st != MR_OK) return st;
    const mr_config *cfg = &model.cfg;
    MR_INFO("model %s: %d layers, hidden %d, %d experts (top-%d), vocab %d, %.1f MB fp32, "
            "loaded in %.2f s", model.source, cfg->num_hidden_layers, cfg->hidden_size,
            cfg->n_routed_experts, cfg->num_experts_per_tok, cfg->vocab_size,
            (double)model.weights.n_bytes / 1e6, mr_now() - t_load);

    if ((st = mr_sampler_init(&sampler, &a->sampling)) != MR_OK) goto done;
    if ((st = validate_request(cfg, a)) != MR_OK) goto done;

    const int S = a->n_prompt, N = a->max_new_tokens, V = cfg->vocab_size;
    const int block_tokens = 16;
    int n_blocks = (S + N + block_tokens - 1) / block_tokens;
    mr_engine_opts opts = {.kernels = k, .weight_type = a->bf16 ? MR_WT_BF16 : MR_WT_F32,
                           .attn = a->attn};
    if ((st = mr_engine_create(cfg, &model.weights, &opts, &engine)) != MR_OK) goto done;
    if (opts.weight_type != MR_WT_F32 || !k->host_memory)
        MR_INFO("weights on the %s backend: %s matrices, %.1f MB", k->name,
                mr_wtype_name(opts.weight_type),
                (double)mr_engine_weights(engine)->n_bytes / 1e6);
    if ((st = mr_kv_store_create(k, cfg->num_hidden_layers, mr_config_latent_dim(cfg), block_tokens,
                                 n_blocks, a->kv_dtype, NULL, &kv)) != MR_OK)
        goto done;
    if (!strcmp(k->name, "cuda")) {
        char dev[256] = "";
        mr_cuda_device_describe(dev, sizeof dev);
        MR_INFO("backend %s on %s, %s weights, %s KV", k->name, dev, a->bf16 ? "bf16" : "fp32",
                mr_wtype_name(a->kv_dtype));
    }
    mr_kv_seq_init(&seq, kv.pool);
    if ((st = mr_kv_seq_reserve(&seq, S + N)) != MR_OK) goto done;

    logits = malloc(sizeof(float) * (size_t)S * V);
    ids = malloc(sizeof(int32_t) * (size_t)N);
    positions = malloc(sizeof(int32_t) * (size_t)S);
    seqs = malloc(sizeof(mr_kv_seq *) * (size_t)S);
    if (!logits || !ids || !positions || !seqs) {
        st = mr_fail(MR_ENOMEM, "out of memory for a %d-token prompt", S);
        goto done;
    }
    if (a->logits_out && (st = mr_npy_open(a->logits_out, (size_t)S + N - 1, V, &npy)) != MR_OK)
        goto done;

    /* Prefill: one causal pass over the prompt. */
    double t0 = mr_now();
    for (int i = 0; i < S; i++) {
        positions[i] = i;
        seqs[i] = &seq;
    }
    uint8_t *want = NULL;
    if (!a->logits_out) { /* only the last position's logits are needed */
        want = calloc((size_t)S, 1);
        if (!want) {
            st = mr_fail(MR_ENOMEM, "out of memory");
            goto done;
        }
        want[S - 1] = 1;
    }
    /* without --logits-out the sampler's rule runs on the backend and only
     * token ids come back (the sampler draws u on the host: same tokens) */
    const bool on_backend = !a->logits_out;
    int32_t token;
    mr_sample_row draw;
    mr_batch prefill = {S, a->prompt, positions, seqs, want};
    if (on_backend) mr_sampler_draw(&sampler, &draw);
    st = on_backend ? mr_engine_forward_sample(engine, &prefill, &draw, &token)
                    : mr_engine_forward(engine, &prefill, logits);
    free(want);
    if (st != MR_OK) goto done;
    const float *last = logits;
    if (a->logits_out) {
        if ((st = mr_npy_append(&npy, logits, (size_t)S)) != MR_OK) goto done;
        last = logits + (size_t)(S - 1) * V;
    }
    double t_prefill = mr_now() - t0;

    /* Decode: feed each sampled token back through the latent KV cache. */
    t0 = mr_now();
    if (!on_backend && (st = mr_sampler_next(&sampler, last, V, &token)) != MR_OK) goto done;
    ids[n_gen++] = token;
    while (n_gen < N && (a->ignore_eos || token != cfg->eos_token_id)) {
        int32_t pos = S + n_gen - 1;
        mr_kv_seq *sp = &seq;
        mr_batch step = {1, &token, &pos, &sp, NULL};
        if (on_backend) {
            mr_sampler_draw(&sampler, &draw);
            if ((st = mr_engine_forward_sample(engine, &step, &draw, &token)) != MR_OK) goto done;
            ids[n_gen++] = token;
            continue;
        }
        if ((st = mr_engine_forward(engine, &step, logits)) != MR_OK) goto done;
        if (a->logits_out && (st = mr_npy_append(&npy, logits, 1)) != MR_OK) goto done;
        if ((st = mr_sampler_next(&sampler, logits, V, &token)) != MR_OK) goto done;
        ids[n_gen++] = token;
    }
    double t_decode = mr_now() - t0;
    MR_INFO("prefill %d tokens in %.3f s (%.1f tok/s); decode %d tokens in %.3f s (%.1f tok/s)", S,
            t_prefill, S / (t_prefill > 0 ? t_prefill : 1e-9), n_gen - 1, t_decode,
            (n_gen - 1) / (t_decode > 0 ? t_decode : 1e-9));
    if (a->logits_out) st = mr_npy_close(&npy);

done:
    if (npy.fp) mr_npy_close(&npy);
    mr_kv_seq_release(&seq);
    mr_engine_destroy(engine);
    mr_kv_store_destroy(&kv);
    mr_model_free(&model);
    free(logits);
    free(positions);
    free(seqs);
    if (st == MR_OK) {
        *out_ids = ids;
        *n_out = n_gen;
    } else {
        free(ids);
    }
    return st;
}

int mr_cmd_generate(int argc, char **argv)
{
    generate_args a;
    int want_help = 0;
    mr_log_set_tag("moerun generate");
    if (parse_args(argc, argv, &a, &want_help) != MR_OK) {
        fprintf(stderr, "moerun generate: %s\n\n", mr_last_error());
        usage(stderr);
        free(a.prompt);
        return 2;
    }
    if (want_help) {
        usage(stdout);
        free(a.prompt);
        return 0;
    }
    int32_t *ids = NULL;
    int n = 0;
    mr_status st = run_generate(&a, &ids, &n);
    free(a.prompt);
    if (st != MR_OK) {
        fprintf(stderr, "moerun generate: error: %s\n", mr_last_error());
        return 1;
    }
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    return 0;
}
