#include "model.h"

#include <dirent.h>
#include <stdbool.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "synth.h"

static mr_status load_dir(const char *dir, mr_expert_filter filter, void *filter_ctx,
                          bool routed_only, mr_model *out)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return mr_fail(MR_EINVAL, "model directory path too long: %s", dir);
    MR_TRY(mr_config_load(path, &out->cfg));
    mr_st_archive *archive = NULL;
    MR_TRY(mr_st_open_dir(dir, &archive));
    mr_status st = routed_only
                       ? mr_weights_load_routed(&out->cfg, archive, filter, filter_ctx, &out->weights)
                       : mr_weights_load(&out->cfg, archive, filter, filter_ctx, &out->weights);
    mr_st_close(archive);
    return st;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *ent;
        char path[PATH_MAX];
        while ((ent = readdir(d))) {
            if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, "..")) continue;
            if (snprintf(path, sizeof path, "%s/%s", dir, ent->d_name) < (int)sizeof path)
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static mr_status model_load(const char *dir, mr_expert_filter filter, void *filter_ctx,
                           bool routed_only, mr_model *out)
{
    memset(out, 0, sizeof *out);
    if (dir) {
        snprintf(out->source, sizeof out->source, "%s", dir);
        mr_status st = load_dir(dir, filter, filter_ctx, routed_only, out);
        if (st != MR_OK) return mr_fail_prefix(st, "model %s: ", dir);
        return MR_OK;
    }
    const char *tmp = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof tmpl, "%s/moerun-tiny-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpl)) return mr_fail(MR_EIO, "cannot create a temporary directory in %s", tmpl);
    mr_synth_opts opts = {.preset = "tiny", .dtype = MR_SYNTH_F32, .seed = 0, .shards = 1};
    mr_status st = mr_synth_write(tmpl, &opts);
    if (st == MR_OK) st = load_dir(tmpl, filter, filter_ctx, routed_only, out);
    remove_dir(tmpl);
    snprintf(out->source, sizeof out->source, "built-in tiny (seed 0)");
    if (st != MR_OK) return mr_fail_prefix(st, "built-in tiny model: ");
    return MR_OK;
}

mr_status mr_model_load(const char *dir, mr_expert_filter filter, void *filter_ctx,
                        mr_model *out)
{
    return model_load(dir, filter, filter_ctx, false, out);
}

mr_status mr_model_load_routed(const char *dir, mr_expert_filter filter, void *filter_ctx,
                               mr_model *out)
{
    return model_load(dir, filter, filter_ctx, true, out);
}

void mr_model_free(mr_model *model)
{
    if (!model) return;
    mr_weights_free(&model->weights);
}

/* ---- fingerprint --------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Hash a file's size and either all of it or (safetensors) its header. */
static mr_status hash_file(const char *path, bool header_only, uint64_t *h)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return mr_fail(MR_EIO, "%s: cannot open for fingerprint", path);
    fseek(fp, 0, SEEK_END);
    uint64_t size = (uint64_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    *h = fnv1a(*h, &size, sizeof size);
    uint8_t buf[65536];
    uint64_t left = size;
    if (header_only) { /* safetensors: 8-byte header length, then the header */
        uint8_t len8[8];
        if (fread(len8, 1, 8, fp) != 8) {
            fclose(fp);
            return mr_fail(MR_EIO, "%s: too short for a safetensors header", path);
        }
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = hl << 8 | len8[i];
        left = hl < size ? hl : size;
        *h = fnv1a(*h, len8, 8);
    }
    while (left > 0) {
        size_t n = fread(buf, 1, left < sizeof buf ? (size_t)left : sizeof buf, fp);
        if (n == 0) break;
        *h = fnv1a(*h, buf, n);
        left -= n;
    }
    fclose(fp);
    return MR_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

mr_status mr_model_fingerprint(const char *dir, uint64_t *out)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    if (!dir) {
        static const char builtin[] = "moerun built-in tiny, seed 0, f32";
        *out = fnv1a(h, builtin, sizeof builtin);
        return MR_OK;
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return mr_fail(MR_EINVAL, "model directory path too long: %s", dir);
    MR_TRY(hash_file(path, false, &h));
    DIR *d = opendir(dir);
    if (!d) return mr_fail(MR_EIO, "%s: cannot open model directory", dir);
    char *names[4096];
    int n = 0;
    struct dirent *ent;
    while ((ent = readdir(d)) && n < 4096) {
        size_t len = strlen(ent->d_name);
        if (len > 12 && !strcmp(ent->d_name + len - 12, ".safetensors")) names[n++] = strdup(ent->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    mr_status st = MR_OK;
    for (int i = 0; i < n; i++) {
        if (st == MR_OK && names[i]) {
            h = fnv1a(h, names[i], strlen(names[i]));
            if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) < (int)sizeof path)
                st = hash_file(path, true, &h);
        }
        free(names[i]);
    }
    *out = h;
    return st;
}
