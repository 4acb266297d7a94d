/* common/args.h — strict parsing of command-line values.
 *
 * Each parser rejects trailing garbage, empty strings, overflow and values
 * outside [min, max], with a message naming the flag ("--max-new-tokens:
 * expected an integer in [1, 1000000], got 'x'"). mr_parse_id_list parses
 * "1,17,923" into a malloc'd array the caller frees.
 */
#ifndef MR_ARGS_H
#define MR_ARGS_H

#include <stdint.h>

#include "status.h"

mr_status mr_parse_long(const char *flag, const char *text, long min, long max, long *out);
mr_status mr_parse_int(const char *flag, const char *text, int min, int max, int *out);
mr_status mr_parse_u64(const char *flag, const char *text, uint64_t *out);
mr_status mr_parse_float(const char *flag, const char *text, double min, double max, float *out);
mr_status mr_parse_id_list(const char *flag, const char *text, int32_t **ids, int *n_ids);

#endif
