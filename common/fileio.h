/* common/fileio.h — reading a small text file (configs, indexes, placement
 * files, summaries) whole, with a size cap checked before allocating. */
#ifndef MR_FILEIO_H
#define MR_FILEIO_H

#include <stddef.h>

#include "status.h"

/* *out: malloc'd, NUL-terminated copy of the file (caller frees); *out_len
 * its length without the NUL. A file larger than cap bytes → MR_EPROTO; an
 * unreadable one → MR_EIO; messages name the path. */
mr_status mr_read_small_file(const char *path, size_t cap, char **out, size_t *out_len);

#endif
