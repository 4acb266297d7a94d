/* common/fileio.h — reading a small text file (configs, indexes, placement
 * files, summaries) whole, with a size cap checked before allocating, and
 * reading one as a JSON document. */
#ifndef MR_FILEIO_H
#define MR_FILEIO_H

#include <stddef.h>

#include "status.h"

/* *out: malloc'd, NUL-terminated copy of the file (caller frees); *out_len
 * its length without the NUL. A file larger than cap bytes → MR_EPROTO; an
 * unreadable one → MR_EIO; messages name the path. */
mr_status mr_read_small_file(const char *path, size_t cap, char **out, size_t *out_len);

struct cJSON;
/* The file parsed as one JSON document (*out: caller frees with
 * cJSON_Delete). Errors as above, plus MR_EINVAL "PATH: not valid JSON (at
 * byte N)". */
mr_status mr_read_json_file(const char *path, size_t cap, struct cJSON **out);

#endif
