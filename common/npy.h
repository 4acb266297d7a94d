/* common/npy.h — write float32 arrays as NumPy .npy (format 1.0, '<f4', C order).
 *
 * A writer streams rows: open with the final shape, append rows, close. The
 * header is written first, so the shape must be known up front
 * (mr_npy_rewrite_rows() patches the row count when it was not).
 * Ownership: the writer owns its FILE; close it exactly once.
 */
#ifndef MR_NPY_H
#define MR_NPY_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

typedef struct mr_npy_writer {
    FILE *fp;
    char *path;
    size_t n_cols;
    size_t rows_written;
} mr_npy_writer;

/* Open `path` for an array of shape (n_rows, n_cols); n_rows may be fixed
 * later with mr_npy_close(…, true). */
mr_status mr_npy_open(const char *path, size_t n_rows, size_t n_cols, mr_npy_writer *out);
/* Reopen a file this module wrote and continue appending rows (the cluster:
 * prefill writes a request's prompt rows, decode appends its steps). */
mr_status mr_npy_open_append(const char *path, size_t n_cols, mr_npy_writer *out);
mr_status mr_npy_append(mr_npy_writer *w, const float *rows, size_t n_rows);
/* Close; the header's row count is rewritten to rows_written. */
mr_status mr_npy_close(mr_npy_writer *w);

#endif
