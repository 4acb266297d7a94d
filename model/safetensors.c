/* model/safetensors.c — mmap-backed safetensors reader (single file or
 * sharded index). Contract in safetensors.h.
 *
 * Every header is bounded before it is parsed (length cap, length within the
 * file) and every entry is checked (dtype, dims, offsets within the data
 * section, dtype size × elements == byte span, no overflow) before any tensor
 * byte is touched. Tensors are kept sorted by name for O(log n) lookup and
 * duplicate detection across shards.
 */
#include "safetensors.h"

#include "../common/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

#define ST_MAX_HEADER_BYTES ((uint64_t)100 * 1024 * 1024)
#define ST_MAX_INDEX_BYTES ((size_t)256 * 1024 * 1024)
/* Largest integer a JSON number (a double) represents exactly. */
#define ST_MAX_EXACT_INT 9007199254740992.0

typedef struct st_file {
    char *path;
    uint8_t *map;
    size_t size;
} st_file;

struct mr_st_archive {
    st_file *files;
    size_t n_files;
    mr_tensor_info *tensors;   /* sorted by name */
    size_t n_tensors;
    size_t cap_tensors;
};

/* One weight_map entry of a sharded index. */
typedef struct st_index_entry {
    const char *name;          /* points into the parsed index JSON */
    size_t file_index;
    bool found;
} st_index_entry;

const char *mr_dtype_name(mr_dtype dtype)
{
    switch (dtype) {
    case MR_DT_F32: return "F32";
    case MR_DT_BF16: return "BF16";
    case MR_DT_F16: return "F16";
    case MR_DT_F8_E4M3: return "F8_E4M3";
    }
    return "?";
}

size_t mr_dtype_size(mr_dtype dtype)
{
    switch (dtype) {
    case MR_DT_F32: return 4;
    case MR_DT_BF16: return 2;
    case MR_DT_F16: return 2;
    case MR_DT_F8_E4M3: return 1;
    }
    return 0;
}

static bool dtype_from_name(const char *name, mr_dtype *out)
{
    static const mr_dtype all[] = {MR_DT_F32, MR_DT_BF16, MR_DT_F16, MR_DT_F8_E4M3};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(name, mr_dtype_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    }
    return false;
}

static char *path_join(const char *dir, const char *name)
{
    size_t len = strlen(dir) + strlen(name) + 2;
    char *path = malloc(len);
    if (path)
        snprintf(path, len, "%s/%s", dir, name);
    return path;
}

/* A JSON number that is a non-negative integer not above `max` (exact in a double). */
static bool json_uint(const cJSON *item, double max, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return false;
    double value = item->valuedouble;
    if (!(value >= 0.0) || value > max || value != floor(value))
        return false;
    *out = (uint64_t)value;
    return true;
}

static mr_status map_file(const char *path, st_file *file)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mr_fail(MR_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return mr_fail(MR_EIO, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mr_fail(MR_EIO, "%s: not a regular file", path);
    }
    file->size = (size_t)st.st_size;
    file->map = NULL;
    if (file->size > 0) {
        void *map = mmap(NULL, file->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int err = errno;
            close(fd);
            return mr_fail(MR_EIO, "%s: mmap failed: %s", path, strerror(err));
        }
        file->map = map;
    }
    close(fd);
    return MR_OK;
}

static mr_status grow_tensors(mr_st_archive *archive, size_t extra)
{
    if (archive->n_tensors + extra <= archive->cap_tensors)
        return MR_OK;
    size_t cap = archive->cap_tensors ? archive->cap_tensors : 64;
    while (cap < archive->n_tensors + extra)
        cap *= 2;
    mr_tensor_info *grown = realloc(archive->tensors, cap * sizeof *grown);
    if (!grown)
        return mr_fail(MR_ENOMEM, "safetensors: out of memory for %zu tensors", cap);
    archive->tensors = grown;
    archive->cap_tensors = cap;
    return MR_OK;
}

/* Validate one header entry and fill `t` (name not set). */
static mr_status parse_entry(const st_file *file, const cJSON *entry, const uint8_t *data,
                             uint64_t data_size, mr_tensor_info *t)
{
    const char *path = file->path;
    const char *name = entry->string;
    if (!cJSON_IsObject(entry))
        return mr_fail(MR_EPROTO, "%s: tensor %s: header entry is not an object", path, name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!cJSON_IsString(dtype))
        return mr_fail(MR_EPROTO, "%s: tensor %s: missing string \"dtype\"", path, name);
    if (!dtype_from_name(dtype->valuestring, &t->dtype))
        return mr_fail(MR_EUNSUPPORTED,
                       "%s: tensor %s: unsupported dtype %s (F32, BF16, F16, F8_E4M3)", path,
                       name, dtype->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!cJSON_IsArray(shape))
        return mr_fail(MR_EPROTO, "%s: tensor %s: missing array \"shape\"", path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > MR_ST_MAX_DIMS)
        return mr_fail(MR_EUNSUPPORTED, "%s: tensor %s: %d dims (at most %d)", path, name, ndim,
                       MR_ST_MAX_DIMS);
    t->ndim = ndim;
    uint64_t n_elems = 1;
    int dim_index = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t value;
        if (cJSON_IsNumber(dim) && dim->valuedouble < 0)
            return mr_fail(MR_EPROTO, "%s: tensor %s: negative dim %g in shape", path, name,
                           dim->valuedouble);
        if (!json_uint(dim, ST_MAX_EXACT_INT, &value))
            return mr_fail(MR_EPROTO, "%s: tensor %s: shape dim %d is not a non-negative integer",
                           path, name, dim_index);
        if (__builtin_mul_overflow(n_elems, value, &n_elems) || n_elems > (uint64_t)INT64_MAX)
            return mr_fail(MR_EPROTO, "%s: tensor %s: shape element count overflows", path,
                           name);
        t->shape[dim_index++] = (int64_t)value;
    }
    for (int i = ndim; i < MR_ST_MAX_DIMS; i++)
        t->shape[i] = 0;

    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2)
        return mr_fail(MR_EPROTO, "%s: tensor %s: \"data_offsets\" must be [begin, end]", path,
                       name);
    uint64_t begin, end;
    if (!json_uint(cJSON_GetArrayItem(offsets, 0), (double)data_size, &begin) ||
        !json_uint(cJSON_GetArrayItem(offsets, 1), (double)data_size, &end))
        return mr_fail(MR_EPROTO,
                       "%s: tensor %s: data_offsets out of range (data section is %llu bytes)",
                       path, name, (unsigned long long)data_size);
    if (end < begin)
        return mr_fail(MR_EPROTO, "%s: tensor %s: data_offsets end %llu < begin %llu", path,
                       name, (unsigned long long)end, (unsigned long long)begin);
    uint64_t nbytes;
    if (__builtin_mul_overflow(n_elems, (uint64_t)mr_dtype_size(t->dtype), &nbytes) ||
        nbytes != end - begin)
        return mr_fail(MR_EPROTO,
                       "%s: tensor %s: %s x %llu elements does not match byte span %llu of "
                       "data_offsets",
                       path, name, mr_dtype_name(t->dtype), (unsigned long long)n_elems,
                       (unsigned long long)(end - begin));
    t->n_elems = (int64_t)n_elems;
    t->nbytes = nbytes;
    t->data = data + begin;
    t->file = path;
    return MR_OK;
}

/* Parse the header of a mapped file and append its tensors. */
static mr_status parse_file(mr_st_archive *archive, const st_file *file)
{
    mr_status status = MR_OK;
    cJSON *header = NULL;
    const char *path = file->path;
    uint64_t header_len;

    if (file->size < 8)
        return mr_fail(MR_EPROTO, "%s: file shorter than 8 bytes (%zu): not a safetensors file",
                       path, file->size);
    memcpy(&header_len, file->map, sizeof header_len);
    if (header_len > ST_MAX_HEADER_BYTES)
        return mr_fail(MR_EPROTO, "%s: header length %llu over the cap of %llu bytes", path,
                       (unsigned long long)header_len, (unsigned long long)ST_MAX_HEADER_BYTES);
    if (header_len > file->size - 8)
        return mr_fail(MR_EPROTO, "%s: header length %llu larger than the file (%zu bytes)",
                       path, (unsigned long long)header_len, file->size);

    header = cJSON_ParseWithLength((const char *)file->map + 8, (size_t)header_len);
    if (!header) {
        status = mr_fail(MR_EPROTO, "%s: header is not valid JSON", path);
        goto fail;
    }
    if (!cJSON_IsObject(header)) {
        status = mr_fail(MR_EPROTO, "%s: header is not a JSON object", path);
        goto fail;
    }

    const uint8_t *data = file->map + 8 + header_len;
    uint64_t data_size = file->size - 8 - header_len;
    status = grow_tensors(archive, (size_t)cJSON_GetArraySize(header));
    if (status != MR_OK)
        goto fail;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, header) {
        if (strcmp(entry->string, "__metadata__") == 0)
            continue;
        mr_tensor_info *t = &archive->tensors[archive->n_tensors];
        memset(t, 0, sizeof *t);
        status = parse_entry(file, entry, data, data_size, t);
        if (status != MR_OK)
            goto fail;
        char *name = strdup(entry->string);
        if (!name) {
            status = mr_fail(MR_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        t->name = name;
        archive->n_tensors++;
    }

fail:
    cJSON_Delete(header);
    return status;
}

static int compare_tensor_name(const void *a, const void *b)
{
    return strcmp(((const mr_tensor_info *)a)->name, ((const mr_tensor_info *)b)->name);
}

static int compare_index_name(const void *a, const void *b)
{
    return strcmp(((const st_index_entry *)a)->name, ((const st_index_entry *)b)->name);
}

static mr_status add_file(mr_st_archive *archive, const char *model_dir, const char *name)
{
    st_file *grown = realloc(archive->files, (archive->n_files + 1) * sizeof *grown);
    if (!grown)
        return mr_fail(MR_ENOMEM, "%s: out of memory", model_dir);
    archive->files = grown;
    st_file *file = &archive->files[archive->n_files];
    memset(file, 0, sizeof *file);
    file->path = path_join(model_dir, name);
    if (!file->path)
        return mr_fail(MR_ENOMEM, "%s: out of memory", model_dir);
    archive->n_files++;
    return map_file(file->path, file);
}


/* Shard file names must be plain names inside the model directory. */
static bool plain_file_name(const char *name)
{
    return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 &&
           strcmp(name, "..") != 0;
}

static mr_status open_sharded(mr_st_archive *archive, const char *model_dir,
                              const char *index_path)
{
    mr_status status = MR_OK;
    char *text = NULL;
    size_t text_len = 0;
    cJSON *index = NULL;
    st_index_entry *entries = NULL;
    size_t n_entries = 0;

    status = mr_read_small_file(index_path, ST_MAX_INDEX_BYTES, &text, &text_len);
    if (status != MR_OK)
        goto fail;
    index = cJSON_ParseWithLength(text, text_len);
    if (!cJSON_IsObject(index)) {
        status = mr_fail(MR_EPROTO, "%s: not a JSON object", index_path);
        goto fail;
    }
    const cJSON *weight_map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
    if (!cJSON_IsObject(weight_map)) {
        status = mr_fail(MR_EPROTO, "%s: missing object \"weight_map\"", index_path);
        goto fail;
    }
    entries = calloc((size_t)cJSON_GetArraySize(weight_map) + 1, sizeof *entries);
    if (!entries) {
        status = mr_fail(MR_ENOMEM, "%s: out of memory", index_path);
        goto fail;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, weight_map) {
        if (!cJSON_IsString(item) || !plain_file_name(item->valuestring)) {
            status = mr_fail(MR_EPROTO, "%s: weight_map[%s] must be a plain shard file name",
                             index_path, item->string);
            goto fail;
        }
        size_t file_index = 0;
        while (file_index < archive->n_files &&
               strcmp(strrchr(archive->files[file_index].path, '/') + 1, item->valuestring) != 0)
            file_index++;
        if (file_index == archive->n_files) {
            status = add_file(archive, model_dir, item->valuestring);
            if (status != MR_OK) {
                mr_fail_prefix(status, "%s names shard %s: ", index_path, item->valuestring);
                goto fail;
            }
            status = parse_file(archive, &archive->files[file_index]);
            if (status != MR_OK)
                goto fail;
        }
        entries[n_entries].name = item->string;
        entries[n_entries].file_index = file_index;
        n_entries++;
    }
    qsort(entries, n_entries, sizeof *entries, compare_index_name);
    for (size_t i = 1; i < n_entries; i++) {
        if (strcmp(entries[i - 1].name, entries[i].name) == 0) {
            status = mr_fail(MR_EPROTO, "%s: weight_map lists %s twice", index_path,
                             entries[i].name);
            goto fail;
        }
    }

    /* Every tensor of a shard must be listed for that shard, and the other way round. */
    for (size_t i = 0; i < archive->n_tensors; i++) {
        const mr_tensor_info *t = &archive->tensors[i];
        st_index_entry key = {.name = t->name};
        st_index_entry *hit = bsearch(&key, entries, n_entries, sizeof *entries,
                                      compare_index_name);
        if (!hit || strcmp(archive->files[hit->file_index].path, t->file) != 0) {
            status = mr_fail(MR_EPROTO, "%s: tensor %s is not listed for this shard in %s",
                             t->file, t->name, index_path);
            goto fail;
        }
        hit->found = true;
    }
    for (size_t i = 0; i < n_entries; i++) {
        if (!entries[i].found) {
            status = mr_fail(MR_EPROTO, "%s: index names tensor %s in %s, which does not hold it",
                             index_path, entries[i].name,
                             archive->files[entries[i].file_index].path);
            goto fail;
        }
    }

fail:
    free(entries);
    cJSON_Delete(index);
    free(text);
    return status;
}

mr_status mr_st_open_dir(const char *model_dir, mr_st_archive **out)
{
    mr_status status = MR_OK;
    char *index_path = NULL;
    mr_st_archive *archive = calloc(1, sizeof *archive);
    *out = NULL;
    if (!archive)
        return mr_fail(MR_ENOMEM, "%s: out of memory", model_dir);

    index_path = path_join(model_dir, "model.safetensors.index.json");
    if (!index_path) {
        status = mr_fail(MR_ENOMEM, "%s: out of memory", model_dir);
        goto fail;
    }
    if (access(index_path, F_OK) == 0) {
        status = open_sharded(archive, model_dir, index_path);
    } else {
        status = add_file(archive, model_dir, "model.safetensors");
        if (status == MR_OK)
            status = parse_file(archive, &archive->files[0]);
        else
            mr_fail_prefix(status, "%s: no model.safetensors.index.json, and ", model_dir);
    }
    if (status != MR_OK)
        goto fail;

    if (archive->n_tensors > 0)
        qsort(archive->tensors, archive->n_tensors, sizeof *archive->tensors,
              compare_tensor_name);
    for (size_t i = 1; i < archive->n_tensors; i++) {
        if (strcmp(archive->tensors[i - 1].name, archive->tensors[i].name) == 0) {
            status = mr_fail(MR_EPROTO, "%s: duplicate tensor %s (in %s and %s)", model_dir,
                             archive->tensors[i].name, archive->tensors[i - 1].file,
                             archive->tensors[i].file);
            goto fail;
        }
    }
    free(index_path);
    *out = archive;
    return MR_OK;

fail:
    free(index_path);
    mr_st_close(archive);
    return status;
}

void mr_st_close(mr_st_archive *archive)
{
    if (!archive)
        return;
    for (size_t i = 0; i < archive->n_tensors; i++)
        free((char *)archive->tensors[i].name);
    free(archive->tensors);
    for (size_t i = 0; i < archive->n_files; i++) {
        if (archive->files[i].map)
            munmap(archive->files[i].map, archive->files[i].size);
        free(archive->files[i].path);
    }
    free(archive->files);
    free(archive);
}

size_t mr_st_count(const mr_st_archive *archive)
{
    return archive->n_tensors;
}

const mr_tensor_info *mr_st_at(const mr_st_archive *archive, size_t index)
{
    return index < archive->n_tensors ? &archive->tensors[index] : NULL;
}

const mr_tensor_info *mr_st_find(const mr_st_archive *archive, const char *name)
{
    mr_tensor_info key = {.name = name};
    if (archive->n_tensors == 0)
        return NULL;
    return bsearch(&key, archive->tensors, archive->n_tensors, sizeof key, compare_tensor_name);
}

mr_status mr_st_read_f32(const mr_tensor_info *t, float *dst)
{
    size_t n = (size_t)t->n_elems;
    switch (t->dtype) {
    case MR_DT_F32:
        memcpy(dst, t->data, n * sizeof *dst);
        return MR_OK;
    case MR_DT_BF16:
    case MR_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t bits;
            memcpy(&bits, t->data + 2 * i, sizeof bits);
            dst[i] = t->dtype == MR_DT_BF16 ? mr_bf16_to_f32(bits) : mr_f16_to_f32(bits);
        }
        return MR_OK;
    case MR_DT_F8_E4M3:
        break;
    }
    return mr_fail(MR_EINVAL, "%s: tensor %s is %s: dequantize it with its _scale_inv",
                   t->file, t->name, mr_dtype_name(t->dtype));
}

mr_status mr_st_read_fp8_dequant(const mr_tensor_info *w, const mr_tensor_info *scale_inv,
                                 int block_rows, int block_cols, float *dst)
{
    float table[256];
    if (w->dtype != MR_DT_F8_E4M3 || w->ndim != 2)
        return mr_fail(MR_EINVAL, "%s: tensor %s: fp8 dequant needs a 2-D F8_E4M3 tensor", w->file,
                       w->name);
    if (block_rows <= 0 || block_cols <= 0)
        return mr_fail(MR_EINVAL, "tensor %s: fp8 block size %dx%d must be positive", w->name,
                       block_rows, block_cols);
    int64_t rows = w->shape[0], cols = w->shape[1];
    int64_t scale_rows = (rows + block_rows - 1) / block_rows;
    int64_t scale_cols = (cols + block_cols - 1) / block_cols;
    if (scale_inv->dtype != MR_DT_F32 || scale_inv->ndim != 2 ||
        scale_inv->shape[0] != scale_rows || scale_inv->shape[1] != scale_cols)
        return mr_fail(MR_EINVAL,
                       "%s: tensor %s is %s [%lld, %lld], expected F32 [%lld, %lld] for %s "
                       "[%lld, %lld] with block [%d, %d]",
                       scale_inv->file, scale_inv->name, mr_dtype_name(scale_inv->dtype),
                       (long long)scale_inv->shape[0],
                       (long long)(scale_inv->ndim > 1 ? scale_inv->shape[1] : 0),
                       (long long)scale_rows, (long long)scale_cols, w->name, (long long)rows,
                       (long long)cols, block_rows, block_cols);
    for (int code = 0; code < 256; code++)
        table[code] = mr_fp8_e4m3_to_f32((uint8_t)code);

    for (int64_t i = 0; i < rows; i++) {
        const uint8_t *codes = w->data + i * cols;
        float *out = dst + i * cols;
        for (int64_t block = 0; block < scale_cols; block++) {
            float scale;
            memcpy(&scale, scale_inv->data + 4 * ((i / block_rows) * scale_cols + block),
                   sizeof scale);
            int64_t j_end = (block + 1) * block_cols < cols ? (block + 1) * block_cols : cols;
            for (int64_t j = block * block_cols; j < j_end; j++) {
                if ((codes[j] & 0x7F) == 0x7F)
                    return mr_fail(MR_EPROTO, "%s: tensor %s: fp8 NaN code 0x%02X at [%lld, %lld]",
                                   w->file, w->name, codes[j], (long long)i, (long long)j);
                out[j] = table[codes[j]] * scale;
            }
        }
    }
    return MR_OK;
}
