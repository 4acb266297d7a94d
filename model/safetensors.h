/* model/safetensors.h — read-only access to safetensors checkpoints.
 *
 * Opens a model directory holding either `model.safetensors` or a sharded set
 * described by `model.safetensors.index.json` ({"weight_map": {name: file}}).
 * Files are mmapped. Before any tensor byte is used, every header is validated:
 * 8-byte little-endian header length within the file and below a cap
 * (100 MiB), header is a JSON object, each entry has a known dtype (F32, BF16,
 * F16, F8_E4M3), a shape of non-negative dims, data_offsets [begin,end] read
 * as 64-bit, end >= begin, end within the data section, and end - begin ==
 * dtype size × product(shape) (checked without overflow). `__metadata__` is
 * ignored. Sharded: every weight_map entry must be found in the named file.
 *
 * Tensor data pointers are unaligned in general: read them only through the
 * mr_st_read_* helpers (memcpy-based), never by casting.
 *
 * Ownership: the archive owns the mmaps and all mr_tensor_info; pointers stay
 * valid until mr_st_close. Not thread-safe for open/close; concurrent reads ok.
 */
#ifndef MR_SAFETENSORS_H
#define MR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

typedef enum { MR_DT_F32, MR_DT_BF16, MR_DT_F16, MR_DT_F8_E4M3 } mr_dtype;

#define MR_ST_MAX_DIMS 4

typedef struct mr_tensor_info {
    const char *name;
    mr_dtype dtype;
    int ndim;
    int64_t shape[MR_ST_MAX_DIMS];
    int64_t n_elems;
    const uint8_t *data;   /* unaligned; use mr_st_read_* */
    uint64_t nbytes;
    const char *file;      /* shard path, for messages */
} mr_tensor_info;

typedef struct mr_st_archive mr_st_archive;

mr_status mr_st_open_dir(const char *model_dir, mr_st_archive **out);
void mr_st_close(mr_st_archive *archive); /* accepts NULL */

size_t mr_st_count(const mr_st_archive *archive);
const mr_tensor_info *mr_st_at(const mr_st_archive *archive, size_t index);
/* NULL when absent. */
const mr_tensor_info *mr_st_find(const mr_st_archive *archive, const char *name);

const char *mr_dtype_name(mr_dtype dtype);
size_t mr_dtype_size(mr_dtype dtype);

/* Convert an F32/BF16/F16 tensor to fp32. dst holds t->n_elems floats.
 * F8_E4M3 is refused here (it needs its scale: use mr_st_read_fp8_dequant). */
mr_status mr_st_read_f32(const mr_tensor_info *t, float *dst);

/* Dequantize a 2-D F8_E4M3 weight [rows, cols] with its F32 scale_inv of shape
 * [ceil(rows/block_rows), ceil(cols/block_cols)]: dst[i,j] = fp8(w[i,j]) *
 * scale_inv[i/block_rows, j/block_cols]. NaN codes (0x7F/0xFF) are an error
 * naming the tensor. Shape mismatch of the scale is an error. */
mr_status mr_st_read_fp8_dequant(const mr_tensor_info *w, const mr_tensor_info *scale_inv,
                                 int block_rows, int block_cols, float *dst);

/* Scalar conversions (exact). */
float mr_bf16_to_f32(uint16_t bits);
uint16_t mr_f32_to_bf16(float value);       /* round to nearest even */
float mr_f16_to_f32(uint16_t bits);
float mr_fp8_e4m3_to_f32(uint8_t code);      /* NaN for 0x7F/0xFF */
uint8_t mr_f32_to_fp8_e4m3(float value);     /* RNE, saturates at ±448 */

#endif
