/* tests/model/model_test_util.c — see model_test_util.h. */
#include "model_test_util.h"

#include <cjson/cJSON.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/status.h"
#include "model/synth.h"

static void die(const char *what, const char *path)
{
    fprintf(stderr, "test util: %s %s failed\n", what, path);
    abort();
}

char *mt_make_tempdir(void)
{
    const char *base = getenv("TMPDIR");
    char templ[4096];
    snprintf(templ, sizeof templ, "%s/moerun-model-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(templ))
        die("mkdtemp", templ);
    return strdup(templ);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void mt_remove_tree(const char *dir)
{
    if (dir)
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *mt_path(const char *dir, const char *name)
{
    static char buffers[4][4096];
    static int next;
    char *buf = buffers[next++ % 4];
    snprintf(buf, sizeof buffers[0], "%s/%s", dir, name);
    return buf;
}

void mt_write_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp || (len > 0 && fwrite(data, 1, len, fp) != len) || fclose(fp) != 0)
        die("write", path);
}

char *mt_read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        die("open", path);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    rewind(fp);
    char *buf = malloc((size_t)size + 1);
    if (!buf || fread(buf, 1, (size_t)size, fp) != (size_t)size)
        die("read", path);
    fclose(fp);
    buf[size] = '\0';
    if (len)
        *len = (size_t)size;
    return buf;
}

void mt_write_raw_safetensors(const char *path, const char *header, const void *data,
                              size_t data_len)
{
    size_t header_len = strlen(header);
    size_t total = 8 + header_len + data_len;
    uint8_t *buf = malloc(total);
    uint64_t len64 = header_len;
    memcpy(buf, &len64, 8);
    memcpy(buf + 8, header, header_len);
    if (data_len)
        memcpy(buf + 8 + header_len, data, data_len);
    mt_write_file(path, buf, total);
    free(buf);
}

void mt_write_safetensors(const char *path, const mt_tensor *tensors, size_t n)
{
    cJSON *header = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(header, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *entry = cJSON_AddObjectToObject(header, tensors[i].name);
        cJSON_AddStringToObject(entry, "dtype", tensors[i].dtype);
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        for (int d = 0; d < tensors[i].ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)tensors[i].shape[d]));
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)(offset + tensors[i].nbytes)));
        offset += tensors[i].nbytes;
    }
    char *text = cJSON_PrintUnformatted(header);
    cJSON_Delete(header);
    uint8_t *data = malloc(offset ? offset : 1);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (tensors[i].nbytes)
            memcpy(data + at, tensors[i].data, tensors[i].nbytes);
        at += tensors[i].nbytes;
    }
    mt_write_raw_safetensors(path, text, data, offset);
    free(data);
    free(text);
}

mt_tensor *mt_tensors_from_archive(const mr_st_archive *archive, size_t *n)
{
    size_t count = mr_st_count(archive);
    mt_tensor *out = calloc(count + 1, sizeof *out);
    for (size_t i = 0; i < count; i++) {
        const mr_tensor_info *t = mr_st_at(archive, i);
        snprintf(out[i].name, sizeof out[i].name, "%s", t->name);
        out[i].dtype = mr_dtype_name(t->dtype);
        out[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++)
            out[i].shape[d] = t->shape[d];
        out[i].data = t->data;
        out[i].nbytes = (size_t)t->nbytes;
    }
    *n = count;
    return out;
}

void mt_copy_config(const char *src_dir, const char *dst_dir)
{
    size_t len = 0;
    mkdir(dst_dir, 0777);
    char *text = mt_read_file(mt_path(src_dir, "config.json"), &len);
    mt_write_file(mt_path(dst_dir, "config.json"), text, len);
    free(text);
}

void mt_synth(const char *dir, const char *preset, int dtype, int shards, uint64_t seed)
{
    mr_synth_opts opts = {.preset = preset, .dtype = (mr_synth_dtype)dtype, .seed = seed,
                          .shards = shards, .gate_bias_offset = 0.0f};
    if (mr_synth_write(dir, &opts) != MR_OK) {
        fprintf(stderr, "synth %s failed: %s\n", dir, mr_last_error());
        abort();
    }
}
