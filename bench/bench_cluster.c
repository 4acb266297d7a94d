/* bench/bench_cluster.c — `moerun bench cluster`: CPU-seconds per generated
 * token of the disaggregated cluster against the single-process engine on
 * the same requests.
 *
 *   moerun bench cluster [--model DIR] [--layout P,D,E] [--requests N]
 *                        [--prompt-len L] [--new-tokens G] [--json FILE]
 *
 * Without --model a `small` preset model (f32) is synthesized in a temporary
 * directory. The request set is fixed: N prompts of lengths L/2..L, G greedy
 * tokens each (eos ignored). Both sides run with one OpenBLAS thread per
 * process and exclude model loading:
 *   single   this process: every prompt prefilled in one batch, then decode
 *            steps over all running sequences (continuous batching), user+sys
 *            CPU time of the process;
 *   cluster  launch/moerun-cluster with the same requests; the sum over all
 *            ranks of user+sys CPU time since each loaded its model (RankStats),
 *            plus the per-role split into compute / transfer / wait.
 * Target (issue): cluster ≤ 1.3× single in CPU-seconds per token.
 */
#include <cblas.h>
#include <fcntl.h>
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/args.h"
#include "../common/fileio.h"
#include "../common/timer.h"
#include "../model/engine.h"
#include "../model/model.h"
#include "../model/sampler.h"
#include "../model/synth.h"
#include "bench_cluster.h"

typedef struct cluster_opts {
    const char *model_dir;
    int prefill, decode, expert;
    int n_requests, prompt_len, new_tokens;
    const char *json_path;
} cluster_opts;

static int prompt_len_of(const cluster_opts *o, int i)
{
    return o->prompt_len / 2 + (i * 37) % (o->prompt_len - o->prompt_len / 2 + 1);
}

static int32_t token_of(int i, int j, int vocab)
{
    return (int32_t)((i * 7919 + j * 104729 + 13) % vocab);
}

/* Single-process continuous batching over the request set; returns CPU s. */
static mr_status run_single(const mr_model *m, const cluster_opts *o, double *cpu_s,
                            double *wall_s, long *tokens)
{
    const mr_config *c = &m->cfg;
    const int n = o->n_requests, V = c->vocab_size;
    int total_prompt = 0;
    for (int i = 0; i < n; i++) total_prompt += prompt_len_of(o, i);
    mr_engine *e = NULL;
    mr_kv_pool *pool = NULL;
    mr_kv_seq *seqs = calloc((size_t)n, sizeof *seqs);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)total_prompt);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)total_prompt);
    mr_kv_seq **seq_of = malloc(sizeof(mr_kv_seq *) * (size_t)total_prompt);
    uint8_t *want = calloc((size_t)total_prompt, 1);
    float *logits = malloc(sizeof(float) * (size_t)n * V);
    int32_t *last = malloc(sizeof(int32_t) * (size_t)n);
    mr_status st = MR_OK;
    if (!seqs || !ids || !pos || !seq_of || !want || !logits || !last) {
        st = mr_fail(MR_ENOMEM, "bench cluster: out of memory");
        goto done;
    }
    int per_seq = (o->prompt_len + o->new_tokens + 15) / 16;
    if ((st = mr_kv_pool_create(c->num_hidden_layers, mr_config_latent_dim(c), 16, n * per_seq,
                                &pool)) != MR_OK)
        goto done;
    if ((st = mr_engine_create(c, &m->weights, NULL, &e)) != MR_OK) goto done;
    double cpu0 = mr_cpu_seconds(), t0 = mr_now();
    int k = 0;
    for (int i = 0; i < n; i++) {
        mr_kv_seq_init(&seqs[i], pool);
        int len = prompt_len_of(o, i);
        if ((st = mr_kv_seq_reserve(&seqs[i], len + o->new_tokens)) != MR_OK) goto done;
        for (int j = 0; j < len; j++, k++) {
            ids[k] = token_of(i, j, V);
            pos[k] = j;
            seq_of[k] = &seqs[i];
            want[k] = j == len - 1;
        }
    }
    mr_batch prefill = {total_prompt, ids, pos, seq_of, want};
    if ((st = mr_engine_forward(e, &prefill, logits)) != MR_OK) goto done;
    for (int i = 0; i < n; i++) last[i] = mr_argmax(logits + (size_t)i * V, V);
    *tokens = n;
    for (int g = 1; g < o->new_tokens; g++) {
        for (int i = 0; i < n; i++) {
            pos[i] = prompt_len_of(o, i) + g - 1;
            seq_of[i] = &seqs[i];
        }
        mr_batch step = {n, last, pos, seq_of, NULL};
        if ((st = mr_engine_forward(e, &step, logits)) != MR_OK) goto done;
        for (int i = 0; i < n; i++) last[i] = mr_argmax(logits + (size_t)i * V, V);
        *tokens += n;
    }
    *cpu_s = mr_cpu_seconds() - cpu0;
    *wall_s = mr_now() - t0;
done:
    for (int i = 0; seqs && i < n; i++) mr_kv_seq_release(&seqs[i]);
    free(seqs);
    free(ids);
    free(pos);
    free(seq_of);
    free(want);
    free(logits);
    free(last);
    mr_engine_destroy(e);
    mr_kv_pool_destroy(pool);
    return st;
}

static mr_status write_requests(const char *path, const cluster_opts *o, int vocab)
{
    FILE *fp = fopen(path, "w");
    if (!fp) return mr_fail(MR_EIO, "%s: cannot create", path);
    for (int i = 0; i < o->n_requests; i++) {
        fprintf(fp, "{\"id\":\"b%03d\",\"max_new_tokens\":%d,\"ignore_eos\":true,\"prompt_ids\":[",
                i, o->new_tokens);
        for (int j = 0; j < prompt_len_of(o, i); j++)
            fprintf(fp, j ? ",%d" : "%d", token_of(i, j, vocab));
        fprintf(fp, "]}\n");
    }
    return fclose(fp) == 0 ? MR_OK : mr_fail(MR_EIO, "%s: write failed", path);
}


mr_status mr_bench_find_script(const char *name, char *out, size_t len, char *build_dir,
                               size_t blen)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return mr_fail(MR_EIO, "cannot resolve /proc/self/exe");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    snprintf(build_dir, blen, "%s", exe);
    const char *candidates[] = {"%s/launch/%s", "%s/../launch/%s"};
    for (int i = 0; i < 2; i++) {
        if (snprintf(out, len, candidates[i], exe, name) >= (int)len) continue;
        if (access(out, X_OK) == 0) return MR_OK;
    }
    return mr_fail(MR_EIO, "launch/%s not found next to %s", name, exe);
}

int bench_exec_transport(int argc, char **argv)
{
    char script[PATH_MAX], build_dir[PATH_MAX];
    if (mr_bench_find_script("moerun-bench-transport", script, sizeof script, build_dir,
                             sizeof build_dir) != MR_OK) {
        fprintf(stderr, "moerun bench transport: %s\n", mr_last_error());
        return 1;
    }
    setenv("MOERUN_BUILD_DIR", build_dir, 0);
    char **args = calloc((size_t)argc + 1, sizeof(char *));
    if (!args) return 1;
    args[0] = script;
    for (int i = 2; i < argc; i++) args[i - 1] = argv[i];
    execv(script, args);
    fprintf(stderr, "moerun bench transport: cannot run %s\n", script);
    free(args);
    return 1;
}

typedef struct cluster_result {
    double cpu_s, wall_s;
    long tokens;
    double role_cpu[4], role_compute[4], role_transfer[4], role_wait[4];
} cluster_result;

static const char *const role_names[4] = {"coordinator", "prefill", "decode", "expert"};

static mr_status run_cluster(const char *model_dir, const cluster_opts *o, const char *req_path,
                             const char *summary_path, cluster_result *res)
{
    char launcher[PATH_MAX], build_dir[PATH_MAX], layout[3][16];
    MR_TRY(mr_bench_find_script("moerun-cluster", launcher, sizeof launcher, build_dir,
                                sizeof build_dir));
    snprintf(layout[0], sizeof layout[0], "%d", o->prefill);
    snprintf(layout[1], sizeof layout[1], "%d", o->decode);
    snprintf(layout[2], sizeof layout[2], "%d", o->expert);
    /* the KV pool the requests need (the single process allocates as much) */
    char kv_blocks[16];
    snprintf(kv_blocks, sizeof kv_blocks, "%d",
             o->n_requests * ((o->prompt_len + o->new_tokens + 15) / 16));
    pid_t pid = fork();
    if (pid < 0) return mr_fail(MR_EIO, "fork failed");
    if (pid == 0) {
        setenv("MOERUN_BUILD_DIR", build_dir, 1);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        int devnull = open("/dev/null", 1);
        if (devnull >= 0) dup2(devnull, 1); /* results; the table goes to stderr */
        execl(launcher, launcher, "--prefill", layout[0], "--decode", layout[1], "--expert",
              layout[2], "--model", model_dir, "--requests", req_path, "--summary", summary_path,
              "--max-batch-tokens", "4096", "--max-running", "256", "--kv-blocks", kv_blocks,
              (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return mr_fail(MR_EIO, "cluster run failed (launcher status %d)", status);
    cJSON *s = NULL;
    MR_TRY(mr_read_json_file(summary_path, 64u << 20, &s));
    memset(res, 0, sizeof *res);
    res->wall_s = cJSON_GetNumberValue(cJSON_GetObjectItem(s, "wall_s"));
    res->tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(s, "output_tokens"));
    const cJSON *roles = cJSON_GetObjectItem(s, "roles");
    for (int r = 0; r < 4; r++) {
        const cJSON *ro = cJSON_GetObjectItem(roles, role_names[r]);
        if (!ro) continue;
        res->role_cpu[r] = cJSON_GetNumberValue(cJSON_GetObjectItem(ro, "cpu_s"));
        res->role_compute[r] = cJSON_GetNumberValue(cJSON_GetObjectItem(ro, "compute_s"));
        res->role_transfer[r] = cJSON_GetNumberValue(cJSON_GetObjectItem(ro, "transfer_s"));
        res->role_wait[r] = cJSON_GetNumberValue(cJSON_GetObjectItem(ro, "wait_s"));
        res->cpu_s += res->role_cpu[r];
    }
    cJSON_Delete(s);
    return MR_OK;
}

static int parse(int argc, char **argv, cluster_opts *o)
{
    memset(o, 0, sizeof *o);
    o->prefill = o->decode = o->expert = 1;
    o->n_requests = 16;
    o->prompt_len = 96;
    o->new_tokens = 32;
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        mr_status st = MR_OK;
        if (!v) st = mr_fail(MR_EINVAL, "%s: missing value (or unknown flag)", f);
        else if (!strcmp(f, "--model")) o->model_dir = v;
        else if (!strcmp(f, "--json")) o->json_path = v;
        else if (!strcmp(f, "--requests")) st = mr_parse_int(f, v, 1, 4096, &o->n_requests);
        else if (!strcmp(f, "--prompt-len")) st = mr_parse_int(f, v, 2, 100000, &o->prompt_len);
        else if (!strcmp(f, "--new-tokens")) st = mr_parse_int(f, v, 1, 100000, &o->new_tokens);
        else if (!strcmp(f, "--layout")) {
            if (sscanf(v, "%d,%d,%d", &o->prefill, &o->decode, &o->expert) != 3 || o->prefill < 1 ||
                o->decode < 1 || o->expert < 1)
                st = mr_fail(MR_EINVAL, "--layout: expected P,D,E (each >= 1), got '%s'", v);
        } else st = mr_fail(MR_EINVAL, "unknown flag '%s'", f);
        if (st != MR_OK) {
            fprintf(stderr, "moerun bench cluster: %s\n", mr_last_error());
            return 2;
        }
        i++;
    }
    return 0;
}

int mr_bench_cluster(int argc, char **argv)
{
    cluster_opts o;
    if (parse(argc, argv, &o) != 0) return 2;
    openblas_set_num_threads(1);
    char tmp[PATH_MAX - 64], model_dir[PATH_MAX], req_path[PATH_MAX], sum_path[PATH_MAX];
    const char *tmpdir = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/moerun-bench-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    if (!mkdtemp(tmp)) {
        fprintf(stderr, "moerun bench cluster: cannot create a temporary directory\n");
        return 1;
    }
    mr_status st = MR_OK;
    if (o.model_dir) {
        snprintf(model_dir, sizeof model_dir, "%s", o.model_dir);
    } else {
        snprintf(model_dir, sizeof model_dir, "%s/model", tmp);
        mr_synth_opts so = {.preset = "small", .dtype = MR_SYNTH_F32, .seed = 1, .shards = 1};
        fprintf(stderr, "# synthesizing the small preset into %s\n", model_dir);
        st = mr_synth_write(model_dir, &so);
    }
    mr_model model;
    memset(&model, 0, sizeof model);
    if (st == MR_OK) st = mr_model_load(model_dir, NULL, NULL, &model);
    snprintf(req_path, sizeof req_path, "%s/requests.jsonl", tmp);
    snprintf(sum_path, sizeof sum_path, "%s/summary.json", tmp);
    if (st == MR_OK) st = write_requests(req_path, &o, model.cfg.vocab_size);
    double s_cpu = 0, s_wall = 0;
    long s_tokens = 0;
    cluster_result c;
    memset(&c, 0, sizeof c);
    if (st == MR_OK) {
        fprintf(stderr, "# single process: %d requests, prompts %d..%d, %d new tokens each\n",
                o.n_requests, o.prompt_len / 2, o.prompt_len, o.new_tokens);
        st = run_single(&model, &o, &s_cpu, &s_wall, &s_tokens);
    }
    mr_model_free(&model);
    if (st == MR_OK) {
        fprintf(stderr, "# cluster %dP%dD%dE\n", o.prefill, o.decode, o.expert);
        st = run_cluster(model_dir, &o, req_path, sum_path, &c);
    }
    int rc = 0;
    if (st != MR_OK) {
        fprintf(stderr, "moerun bench cluster: %s\n", mr_last_error());
        rc = 1;
    } else {
        double s_per = s_cpu / (double)s_tokens * 1e3, c_per = c.cpu_s / (double)c.tokens * 1e3;
        printf("# moerun bench cluster: model %s, %d requests, prompts %d..%d, %d new tokens\n",
               o.model_dir ? o.model_dir : "small preset (f32)", o.n_requests, o.prompt_len / 2,
               o.prompt_len, o.new_tokens);
        printf("# OPENBLAS_NUM_THREADS=1 per process; model loading excluded\n#\n");
        printf("# %-14s %8s %10s %10s %14s %10s\n", "mode", "tokens", "cpu(s)", "wall(s)",
               "cpu-ms/token", "ratio");
        printf("  %-14s %8ld %10.3f %10.3f %14.3f %10.2f\n", "single", s_tokens, s_cpu, s_wall,
               s_per, 1.0);
        char name[32];
        snprintf(name, sizeof name, "cluster %dP%dD%dE", o.prefill, o.decode, o.expert);
        printf("  %-14s %8ld %10.3f %10.3f %14.3f %10.2f   (target <= 1.30)\n", name, c.tokens,
               c.cpu_s, c.wall_s, c_per, c_per / s_per);
        printf("#\n# %-12s %10s %10s %12s %10s\n", "role", "cpu(s)", "compute(s)", "transfer(s)",
               "wait(s)");
        for (int r = 0; r < 4; r++)
            printf("  %-12s %10.3f %10.3f %12.3f %10.3f\n", role_names[r], c.role_cpu[r],
                   c.role_compute[r], c.role_transfer[r], c.role_wait[r]);
        if (o.json_path) {
            FILE *fp = fopen(o.json_path, "w");
            if (fp) {
                fprintf(fp, "{\"single\":{\"tokens\":%ld,\"cpu_s\":%.6f,\"wall_s\":%.6f},"
                            "\"cluster\":{\"layout\":\"%dP%dD%dE\",\"tokens\":%ld,\"cpu_s\":%.6f,"
                            "\"wall_s\":%.6f},\"ratio_cpu_per_token\":%.4f}\n",
                        s_tokens, s_cpu, s_wall, o.prefill, o.decode, o.expert, c.tokens, c.cpu_s,
                        c.wall_s, c_per / s_per);
                fclose(fp);
            }
        }
    }
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "moerun bench cluster: could not remove %s\n", tmp);
    return rc;
}
