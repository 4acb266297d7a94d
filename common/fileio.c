#include "fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

mr_status mr_read_small_file(const char *path, size_t cap, char **out, size_t *out_len)
{
    mr_status status = MR_OK;
    char *text = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return mr_fail(MR_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(fp, 0, SEEK_END) != 0) {
        status = mr_fail(MR_EIO, "%s: cannot seek", path);
        goto fail;
    }
    long size = ftell(fp);
    if (size < 0 || (unsigned long)size > cap) {
        status = mr_fail(MR_EPROTO, "%s: size %ld outside 0..%zu bytes", path, size, cap);
        goto fail;
    }
    rewind(fp);
    text = malloc((size_t)size + 1);
    if (!text) {
        status = mr_fail(MR_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (fread(text, 1, (size_t)size, fp) != (size_t)size) {
        status = mr_fail(MR_EIO, "%s: short read", path);
        goto fail;
    }
    text[size] = '\0';
    *out = text;
    *out_len = (size_t)size;
    text = NULL;
fail:
    free(text);
    fclose(fp);
    return status;
}

mr_status mr_read_json_file(const char *path, size_t cap, cJSON **out)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    MR_TRY(mr_read_small_file(path, cap, &text, &len));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    mr_status st = MR_OK;
    if (!root)
        st = mr_fail(MR_EINVAL, "%s: not valid JSON (at byte %zu)", path,
                     end && end >= text ? (size_t)(end - text) : (size_t)0);
    free(text);
    *out = root;
    return st;
}
