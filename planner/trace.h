/* planner/trace.h — request traces for `moerun plan capacity`.
 *
 * Two formats, told apart by the first non-blank character ('{' = jsonl):
 *  - Azure LLM inference CSV: header TIMESTAMP,ContextTokens,GeneratedTokens,
 *    then one row per request; TIMESTAMP is wall clock "YYYY-MM-DD
 *    HH:MM:SS[.fraction]" (or plain seconds).
 *  - Mooncake jsonl: one object per line with "timestamp" (milliseconds),
 *    "input_length", "output_length"; other keys (hash_ids) are ignored.
 * Arrivals become seconds from the earliest request; rows are sorted by
 * arrival (stable) when the file is not. Input lengths must be >= 1, output
 * lengths >= 0. A malformed row is an error naming file:line
 * ("trace.csv:17: expected 3 comma-separated fields, got 2"). Blank lines
 * are skipped.
 *
 * Ownership: mr_trace owns reqs (free with mr_trace_free, NULL-safe).
 * Thread-safe (no shared state).
 */
#ifndef MR_TRACE_H
#define MR_TRACE_H

#include <stddef.h>

#include "../common/status.h"
#include "capacity.h"

typedef struct mr_trace {
    mr_cap_request *reqs;
    int n;
    const char *format; /* "azure-csv" or "mooncake-jsonl" (static strings) */
} mr_trace;

/* Parse trace text; `origin` names it in messages (a path). */
mr_status mr_trace_parse(const char *text, size_t len, const char *origin, mr_trace *out);
/* Read and parse `path` (at most 1 GiB). */
mr_status mr_trace_load(const char *path, mr_trace *out);
void mr_trace_free(mr_trace *t);

#endif
