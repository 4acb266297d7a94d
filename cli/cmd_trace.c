/* cli/cmd_trace.c — `moerun trace requests`: a real request trace (Azure
 * CSV or Mooncake jsonl, planner/trace.h) as the cluster's requests jsonl, so
 * a production arrival pattern and length mix can be replayed through
 * launch/moerun-cluster.
 *
 *   moerun trace requests --trace FILE [--model DIR | --preset NAME]
 *                         [--limit N] [--skip N] [--rate-scale X]
 *                         [--max-prompt N] [--max-new N] [--seed S] [--out FILE]
 *
 * Row i (after --skip) becomes {"id": "t<i>", "prompt_ids": [...],
 * "max_new_tokens": ..., "ignore_eos": true, "arrival_ms": ...}: arrival
 * relative to the first row kept, divided by --rate-scale; the prompt is
 * min(input, --max-prompt) pseudo-random token ids below the model's
 * vocab_size (traces carry lengths, not text; --seed picks them); the output
 * length is min(max(output, 1), --max-new) (defaults: 3/4 of
 * max_position_embeddings for prompts, the rest for outputs); both are then
 * capped so that prompt + output fits max_position_embeddings. What was capped is counted on
 * stderr, so a replay on a small test model says how far it is from the trace.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../model/config.h"
#include "../model/synth.h"
#include "../planner/trace.h"
#include "commands.h"

typedef struct trace_opts {
    const char *trace, *model_dir, *preset, *out;
    int limit, skip, max_prompt, max_new;
    float rate_scale;
    uint64_t seed;
} trace_opts;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: moerun trace requests --trace FILE [--model DIR | --preset NAME]\n"
            "                             [--limit N] [--skip N] [--rate-scale X]\n"
            "                             [--max-prompt N] [--max-new N] [--seed S] [--out FILE]\n"
            "A request trace (Azure CSV or Mooncake jsonl) as requests jsonl for\n"
            "launch/moerun-cluster --requests: real arrivals and lengths, pseudo-random token\n"
            "ids for the model (--preset tiny when neither is given); lengths are capped to\n"
            "--max-prompt / --max-new (default: the model's limits) and max_position_embeddings.\n");
}

static mr_status parse(int argc, char **argv, trace_opts *o)
{
    *o = (trace_opts){.preset = "tiny", .limit = -1, .max_prompt = -1, .max_new = -1,
                      .rate_scale = 1.0f, .seed = 1};
    for (int i = 2; i < argc; i += 2) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return mr_fail(MR_EINVAL, "%s: missing value (or unknown flag)", f);
        if (!strcmp(f, "--trace")) o->trace = v;
        else if (!strcmp(f, "--model")) o->model_dir = v;
        else if (!strcmp(f, "--preset")) o->preset = v;
        else if (!strcmp(f, "--out")) o->out = v;
        else if (!strcmp(f, "--limit")) MR_TRY(mr_parse_int(f, v, 1, 100000000, &o->limit));
        else if (!strcmp(f, "--skip")) MR_TRY(mr_parse_int(f, v, 0, 100000000, &o->skip));
        else if (!strcmp(f, "--max-prompt")) MR_TRY(mr_parse_int(f, v, 1, 1 << 24, &o->max_prompt));
        else if (!strcmp(f, "--max-new")) MR_TRY(mr_parse_int(f, v, 1, 1 << 24, &o->max_new));
        else if (!strcmp(f, "--rate-scale")) MR_TRY(mr_parse_float(f, v, 1e-6, 1e6, &o->rate_scale));
        else if (!strcmp(f, "--seed")) MR_TRY(mr_parse_u64(f, v, &o->seed));
        else return mr_fail(MR_EINVAL, "unknown flag '%s'", f);
    }
    if (!o->trace) return mr_fail(MR_EINVAL, "--trace is required");
    return MR_OK;
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static mr_status write_requests(const trace_opts *o, const mr_config *cfg, const mr_trace *t,
                                FILE *fp)
{
    const int max_pos = cfg->max_position_embeddings;
    /* defaults leave room for both: 3/4 of the positions for the prompt */
    const int cap_prompt = o->max_prompt > 0 ? o->max_prompt : (3 * max_pos) / 4;
    const int cap_new = o->max_new > 0 ? o->max_new : max_pos - (3 * max_pos) / 4;
    uint64_t rng = o->seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    int n = 0, capped_prompt = 0, capped_new = 0;
    double t0 = 0;
    for (int i = o->skip; i < t->n && (o->limit < 0 || n < o->limit); i++, n++) {
        const mr_cap_request *r = &t->reqs[i];
        if (n == 0) t0 = r->arrival_s;
        int prompt = r->input_tokens < cap_prompt ? r->input_tokens : cap_prompt;
        int out = r->output_tokens < 1 ? 1 : r->output_tokens;
        out = out < cap_new ? out : cap_new;
        if (prompt + out > max_pos) { /* keep the prompt, shorten the answer, then the prompt */
            out = max_pos - prompt > 1 ? max_pos - prompt : 1;
            if (prompt + out > max_pos) prompt = max_pos - out;
        }
        capped_prompt += prompt < r->input_tokens;
        capped_new += out < (r->output_tokens < 1 ? 1 : r->output_tokens);
        fprintf(fp, "{\"id\": \"t%d\", \"prompt_ids\": [", i);
        for (int j = 0; j < prompt; j++)
            fprintf(fp, j ? ",%d" : "%d", (int)(next_rand(&rng) % (uint64_t)cfg->vocab_size));
        fprintf(fp, "], \"max_new_tokens\": %d, \"ignore_eos\": true, \"arrival_ms\": %.3f}\n", out,
                (r->arrival_s - t0) * 1e3 / o->rate_scale);
    }
    if (ferror(fp)) return mr_fail(MR_EIO, "writing the requests failed");
    fprintf(stderr, "moerun trace: %d requests from %s (%s) over %.1f s at rate scale %g; "
            "%d prompts capped to %d tokens, %d outputs capped to %d tokens (model: vocab %d, "
            "max_position_embeddings %d)\n", n, o->trace, t->format,
            n ? (t->reqs[o->skip + n - 1].arrival_s - t0) / o->rate_scale : 0.0,
            (double)o->rate_scale, capped_prompt, cap_prompt, capped_new, cap_new,
            cfg->vocab_size, max_pos);
    return MR_OK;
}

int mr_cmd_trace(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "requests") != 0) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            usage(stdout);
            return 0;
        }
        if (argc >= 2) fprintf(stderr, "moerun trace: unknown action '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    trace_opts o;
    if (parse(argc, argv, &o) != MR_OK) {
        fprintf(stderr, "moerun trace: %s\n\n", mr_last_error());
        usage(stderr);
        return 2;
    }
    mr_config cfg;
    mr_status st;
    if (o.model_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", o.model_dir);
        st = mr_config_load(path, &cfg);
    } else {
        st = mr_synth_preset_config(o.preset, &cfg);
    }
    mr_trace t = {0};
    if (st == MR_OK) st = mr_trace_load(o.trace, &t);
    FILE *fp = stdout;
    if (st == MR_OK && o.out && !(fp = fopen(o.out, "w")))
        st = mr_fail(MR_EIO, "--out %s: cannot open for writing", o.out);
    if (st == MR_OK) st = write_requests(&o, &cfg, &t, fp);
    if (fp && fp != stdout && fclose(fp) != 0 && st == MR_OK)
        st = mr_fail(MR_EIO, "--out %s: write failed", o.out);
    mr_trace_free(&t);
    if (st != MR_OK) {
        fprintf(stderr, "moerun trace: error: %s\n", mr_last_error());
        return 1;
    }
    return 0;
}
