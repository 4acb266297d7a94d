/* tests/model/model_test_util.h — helpers for the model tests: temp dirs,
 * raw file writing, and a small safetensors writer for crafting (possibly
 * hostile) checkpoints. Test code only; aborts on I/O failure.
 */
#ifndef MR_MODEL_TEST_UTIL_H
#define MR_MODEL_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "model/safetensors.h"

/* mkdtemp under $TMPDIR or /tmp; caller frees and removes with mt_remove_tree. */
char *mt_make_tempdir(void);
void mt_remove_tree(const char *dir);

/* dir/name joined into a static rotating buffer (valid for a few calls). */
const char *mt_path(const char *dir, const char *name);

void mt_write_file(const char *path, const void *data, size_t len);
/* Whole file into a malloc'd buffer (NUL-terminated); *len may be NULL. */
char *mt_read_file(const char *path, size_t *len);

/* Raw safetensors: 8-byte little-endian header length + header + data. */
void mt_write_raw_safetensors(const char *path, const char *header, const void *data,
                              size_t data_len);

/* One tensor for mt_write_safetensors; data is not owned. */
typedef struct mt_tensor {
    char name[192];
    const char *dtype;          /* "F32", "BF16", ... (written verbatim) */
    int ndim;
    int64_t shape[4];
    const uint8_t *data;
    size_t nbytes;
} mt_tensor;

/* Well-formed safetensors file of `n` tensors (offsets computed). */
void mt_write_safetensors(const char *path, const mt_tensor *tensors, size_t n);

/* Every tensor of an archive as mt_tensors pointing into its mmap (malloc'd). */
mt_tensor *mt_tensors_from_archive(const mr_st_archive *archive, size_t *n);

/* Copy config.json of src_dir into dst_dir (created if needed). */
void mt_copy_config(const char *src_dir, const char *dst_dir);

/* Write a synth model (aborts on failure). */
void mt_synth(const char *dir, const char *preset, int dtype, int shards, uint64_t seed);

#endif
