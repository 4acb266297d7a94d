/* kernels/kbuf.c — see kbuf.h. */
#include "kbuf.h"

static void *reserve(const mr_kernels *k, mr_kbuf *b, size_t bytes, bool host, mr_status *st)
{
    if (*st != MR_OK) return NULL;
    if (bytes == 0) bytes = sizeof(float);
    if (b->cap < bytes) {
        mr_kbuf_free(k, b);
        /* round up to 1/8 more so growing batches do not reallocate every step */
        size_t want = bytes + bytes / 8;
        void *p = host ? k->host_alloc(want) : k->alloc(want);
        if (!p) {
            *st = mr_fail(MR_ENOMEM, "%s backend: cannot allocate %zu bytes of %s", k->name, want,
                          host ? "staging memory" : "scratch");
            return NULL;
        }
        b->p = p;
        b->cap = want;
        b->host = host;
    }
    return b->p;
}

void *mr_kbuf_reserve(const mr_kernels *k, mr_kbuf *b, size_t bytes, mr_status *st)
{
    return reserve(k, b, bytes, false, st);
}

void *mr_kbuf_reserve_host(const mr_kernels *k, mr_kbuf *b, size_t bytes, mr_status *st)
{
    return reserve(k, b, bytes, true, st);
}

void mr_kbuf_free(const mr_kernels *k, mr_kbuf *b)
{
    if (b->p) {
        if (b->host)
            k->host_free(b->p);
        else
            k->free(b->p);
    }
    b->p = NULL;
    b->cap = 0;
    b->host = false;
}
