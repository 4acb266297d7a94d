/* cli/cmd_synth.c — `moerun synth`: write a random-weight model in the
 * DeepSeek-V3 release format (see model/synth.h).
 *
 *   moerun synth --out DIR [--preset tiny|tiny-v2|tiny-lite|small]
 *                [--dtype f32|bf16|fp8] [--seed N] [--shards N]
 *                [--gate-bias-offset X]
 *
 * Prints the directory and the total tensor bytes to stderr; exit 0, 1 on a
 * runtime error, 2 on a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/status.h"
#include "../model/safetensors.h"
#include "../model/synth.h"
#include "commands.h"

static void synth_usage(FILE *out)
{
    fprintf(out,
            "usage: moerun synth --out DIR [--preset tiny|tiny-v2|tiny-lite|small]\n"
            "                    [--dtype f32|bf16|fp8] [--seed N] [--shards N]\n"
            "                    [--gate-bias-offset X] [--hot-experts ID,... [--hot-bias X]]\n"
            "--hot-experts: these experts get +X (default 0.3) on their router bias in every\n"
            "MoE layer, so routing prefers them (persistently hot experts, for balancing tests).\n");
}

static int parse_u64(const char *text, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-')
        return -1;
    *out = value;
    return 0;
}

int mr_cmd_synth(int argc, char **argv)
{
    const char *out_dir = NULL;
    mr_synth_opts opts = {.preset = "tiny", .dtype = MR_SYNTH_F32, .seed = 0, .shards = 1,
                          .gate_bias_offset = 0.0f, .hot_bias = 0.3f};
    static int32_t hot[1024];
    const char *dtype_name = "f32";

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            synth_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "moerun synth: %s: unknown option or missing value\n", arg);
            synth_usage(stderr);
            return 2;
        }
        const char *value = argv[++i];
        uint64_t number = 0;
        char *end = NULL;
        if (strcmp(arg, "--out") == 0) {
            out_dir = value;
        } else if (strcmp(arg, "--preset") == 0) {
            opts.preset = value;
        } else if (strcmp(arg, "--dtype") == 0) {
            dtype_name = value;
            if (strcmp(value, "f32") == 0) {
                opts.dtype = MR_SYNTH_F32;
            } else if (strcmp(value, "bf16") == 0) {
                opts.dtype = MR_SYNTH_BF16;
            } else if (strcmp(value, "fp8") == 0) {
                opts.dtype = MR_SYNTH_FP8;
            } else {
                fprintf(stderr, "moerun synth: --dtype %s: expected f32, bf16 or fp8\n", value);
                return 2;
            }
        } else if (strcmp(arg, "--seed") == 0) {
            if (parse_u64(value, &opts.seed) != 0) {
                fprintf(stderr, "moerun synth: --seed %s: expected an unsigned integer\n", value);
                return 2;
            }
        } else if (strcmp(arg, "--shards") == 0) {
            if (parse_u64(value, &number) != 0 || number < 1 || number > 99999) {
                fprintf(stderr, "moerun synth: --shards %s: expected 1..99999\n", value);
                return 2;
            }
            opts.shards = (int)number;
        } else if (strcmp(arg, "--hot-experts") == 0) {
            int32_t *ids = NULL;
            int n = 0;
            if (mr_parse_id_list(arg, value, &ids, &n) != MR_OK || n > 1024) {
                fprintf(stderr, "moerun synth: %s\n",
                        n > 1024 ? "--hot-experts: at most 1024 ids" : mr_last_error());
                free(ids);
                return 2;
            }
            memcpy(hot, ids, sizeof(int32_t) * (size_t)n);
            free(ids);
            opts.hot_experts = hot;
            opts.n_hot_experts = n;
        } else if (strcmp(arg, "--hot-bias") == 0) {
            opts.hot_bias = strtof(value, &end);
            if (end == value || *end != '\0') {
                fprintf(stderr, "moerun synth: --hot-bias %s: expected a number\n", value);
                return 2;
            }
        } else if (strcmp(arg, "--gate-bias-offset") == 0) {
            opts.gate_bias_offset = strtof(value, &end);
            if (end == value || *end != '\0') {
                fprintf(stderr, "moerun synth: --gate-bias-offset %s: expected a number\n",
                        value);
                return 2;
            }
        } else {
            fprintf(stderr, "moerun synth: unknown option %s\n", arg);
            synth_usage(stderr);
            return 2;
        }
    }
    if (!out_dir) {
        fprintf(stderr, "moerun synth: --out DIR is required\n");
        synth_usage(stderr);
        return 2;
    }

    mr_status status = mr_synth_write(out_dir, &opts);
    if (status != MR_OK) {
        fprintf(stderr, "moerun synth: error: %s\n", mr_last_error());
        return 1;
    }
    /* Re-open what was written: a cheap self-check and the byte count. */
    mr_st_archive *archive = NULL;
    status = mr_st_open_dir(out_dir, &archive);
    if (status != MR_OK) {
        fprintf(stderr, "moerun synth: error reading back %s: %s\n", out_dir, mr_last_error());
        return 1;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < mr_st_count(archive); i++)
        total += mr_st_at(archive, i)->nbytes;
    fprintf(stderr, "moerun synth: wrote %s: preset %s, dtype %s, %zu tensors, %" PRIu64
                    " bytes in %d file(s)\n",
            out_dir, opts.preset, dtype_name, mr_st_count(archive), total, opts.shards);
    mr_st_close(archive);
    return 0;
}
