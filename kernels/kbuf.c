/* kernels/kbuf.c — see kbuf.h. */
#include "kbuf.h"

void *mr_kbuf_reserve(const mr_kernels *k, mr_kbuf *b, size_t bytes, mr_status *st)
{
    if (*st != MR_OK) return NULL;
    if (bytes == 0) bytes = sizeof(float);
    if (b->cap < bytes) {
        k->free(b->p);
        b->p = NULL;
        b->cap = 0;
        /* round up to 1/8 more so growing batches do not reallocate every step */
        size_t want = bytes + bytes / 8;
        void *p = k->alloc(want);
        if (!p) {
            *st = mr_fail(MR_ENOMEM, "%s backend: cannot allocate %zu bytes of scratch", k->name,
                          want);
            return NULL;
        }
        b->p = p;
        b->cap = want;
    }
    return b->p;
}

void mr_kbuf_free(const mr_kernels *k, mr_kbuf *b)
{
    if (b->p) k->free(b->p);
    b->p = NULL;
    b->cap = 0;
}
