#include "npy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Header: magic, version 1.0, u16 header length, dict padded with spaces to
 * a multiple of 64 bytes including the trailing newline. The row count is
 * printed in a fixed-width field so it can be patched in place on close. */
static mr_status write_header(FILE *fp, size_t n_rows, size_t n_cols, const char *path)
{
    char dict[128];
    int len = snprintf(dict, sizeof dict,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (%20zu, %zu), }",
                       n_rows, n_cols);
    size_t total = 10 + (size_t)len + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t header_len = padded - 10;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(header_len & 0xff),
                             (unsigned char)(header_len >> 8)};
    if (fwrite(pre, 1, sizeof pre, fp) != sizeof pre || fwrite(dict, 1, (size_t)len, fp) != (size_t)len)
        return mr_fail(MR_EIO, "%s: write failed: %s", path, strerror(errno));
    for (size_t i = 10 + (size_t)len; i < padded - 1; i++) fputc(' ', fp);
    fputc('\n', fp);
    return MR_OK;
}

mr_status mr_npy_open(const char *path, size_t n_rows, size_t n_cols, mr_npy_writer *out)
{
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "wb");
    if (!fp) return mr_fail(MR_EIO, "%s: cannot create: %s", path, strerror(errno));
    mr_status st = write_header(fp, n_rows, n_cols, path);
    if (st != MR_OK) {
        fclose(fp);
        return st;
    }
    out->fp = fp;
    out->path = strdup(path);
    out->n_cols = n_cols;
    return out->path ? MR_OK : mr_fail(MR_ENOMEM, "out of memory");
}

mr_status mr_npy_open_append(const char *path, size_t n_cols, mr_npy_writer *out)
{
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "r+b");
    if (!fp) return mr_fail(MR_EIO, "%s: cannot open for append: %s", path, strerror(errno));
    unsigned char pre[10];
    char dict[256];
    size_t rows = 0, cols = 0;
    if (fread(pre, 1, 10, fp) != 10 || pre[0] != 0x93 || pre[6] != 1) goto bad;
    size_t header_len = pre[8] | (size_t)pre[9] << 8;
    if (header_len >= sizeof dict || fread(dict, 1, header_len, fp) != header_len) goto bad;
    dict[header_len] = '\0';
    const char *shape = strstr(dict, "'shape': (");
    if (!shape || sscanf(shape, "'shape': (%zu, %zu)", &rows, &cols) != 2 || cols != n_cols) goto bad;
    if (fseek(fp, 0, SEEK_END) != 0) goto bad;
    long end = ftell(fp);
    if (end < 0 || (size_t)end != 10 + header_len + rows * cols * sizeof(float)) goto bad;
    out->fp = fp;
    out->path = strdup(path);
    out->n_cols = n_cols;
    out->rows_written = rows;
    return out->path ? MR_OK : mr_fail(MR_ENOMEM, "out of memory");
bad:
    fclose(fp);
    return mr_fail(MR_EPROTO, "%s: not a float32 .npy of %zu columns written by moerun", path, n_cols);
}

mr_status mr_npy_append(mr_npy_writer *w, const float *rows, size_t n_rows)
{
    /* x86-64 and every target we build for are little-endian: '<f4' is the
     * in-memory float layout. */
    size_t n = n_rows * w->n_cols;
    if (fwrite(rows, sizeof(float), n, w->fp) != n)
        return mr_fail(MR_EIO, "%s: write failed: %s", w->path, strerror(errno));
    w->rows_written += n_rows;
    return MR_OK;
}

mr_status mr_npy_close(mr_npy_writer *w)
{
    mr_status st = MR_OK;
    if (!w->fp) return MR_OK;
    if (fseek(w->fp, 0, SEEK_SET) != 0 || write_header(w->fp, w->rows_written, w->n_cols, w->path) != MR_OK)
        st = mr_fail(MR_EIO, "%s: cannot finalize header", w->path);
    if (fclose(w->fp) != 0 && st == MR_OK)
        st = mr_fail(MR_EIO, "%s: close failed: %s", w->path, strerror(errno));
    free(w->path);
    memset(w, 0, sizeof *w);
    return st;
}
