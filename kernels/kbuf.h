/* kernels/kbuf.h — a growable buffer of one backend's memory.
 *
 * mr_kbuf_reserve makes the buffer hold at least `bytes` bytes of the
 * backend's memory (alloc/free of the mr_kernels table). It never shrinks,
 * and when it grows the old contents are NOT kept (these are scratch
 * buffers, refilled by every use). The status idiom lets callers reserve
 * several buffers and check once:
 *
 *   mr_status st = MR_OK;
 *   float *a = mr_kbuf_reserve(k, &e->a, n * sizeof(float), &st);
 *   float *b = mr_kbuf_reserve(k, &e->b, m * sizeof(float), &st);
 *   if (st != MR_OK) return st;
 *
 * A reserve after a failure does nothing and returns NULL.
 * Ownership: the caller owns the struct; mr_kbuf_free gives the memory back
 * through the same table that allocated it.
 */
#ifndef MR_KBUF_H
#define MR_KBUF_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/status.h"
#include "kernels.h"

typedef struct mr_kbuf {
    void *p;
    size_t cap;   /* bytes */
    bool host;    /* staging memory from host_alloc (set by _reserve_host) */
} mr_kbuf;

void *mr_kbuf_reserve(const mr_kernels *k, mr_kbuf *b, size_t bytes, mr_status *st);
/* The same in the backend's staging host memory (k->host_alloc: pinned on
 * cuda), for buffers that copies move to and from the backend. A buffer is
 * either host or backend memory for its whole life. */
void *mr_kbuf_reserve_host(const mr_kernels *k, mr_kbuf *b, size_t bytes, mr_status *st);
void mr_kbuf_free(const mr_kernels *k, mr_kbuf *b); /* accepts an empty buffer */

#endif
