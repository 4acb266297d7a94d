#include "process.h"

#include <malloc.h>

void mr_process_init(void)
{
    mallopt(M_MMAP_THRESHOLD, 32 << 20); /* glibc's maximum */
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}
