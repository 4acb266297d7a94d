/* coordinator/requests.h — the coordinator's request list: jsonl parsing and
 * validation, or the built-in demo set.
 *
 * One JSON object per line:
 *   {"id": "r1", "prompt_ids": [1, 17, 200], "max_new_tokens": 8,
 *    "temperature": 0, "top_p": 1, "top_k": 0, "seed": 0,
 *    "ignore_eos": false, "arrival_ms": 0}
 * id, prompt_ids and max_new_tokens are required; the sampling fields default
 * as in `moerun generate` (temperature 0, top_p 1, top_k 0, seed 0),
 * ignore_eos to false, arrival_ms (replay: submit at that offset from the
 * start) to "at once". seed may also be a decimal string (full uint64 range).
 * Unknown keys are ignored. Blank lines are skipped and produce no result.
 *
 * A bad line does not stop the others: it becomes an mr_req_spec whose
 * `error` says "line N: <problem>" (unparsable JSON, missing/empty/non-string
 * id, duplicate id, bad prompt_ids, token id >= vocab_size, prompt longer than
 * max_position_embeddings, bad max_new_tokens, bad sampling params — the last
 * through mr_sampler_init's own message). Such a request ends with that error
 * without being sent anywhere.
 *
 * max_new_tokens is capped as `moerun generate` caps it: positions 0 ..
 * S+N-2 must stay below max_position_embeddings, so N <= max_pos - S + 1
 * (`capped` records the original value).
 *
 * Ownership: an mr_req_set owns every string and array in it; free with
 * mr_req_set_free. Pure logic (no MPI, no transport), thread-compatible.
 */
#ifndef MR_COORD_REQUESTS_H
#define MR_COORD_REQUESTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/config.h"
#include "model/sampler.h"

/* Longest accepted id, in bytes. */
#define MR_REQ_ID_MAX 256

typedef struct mr_req_spec {
    int line;                    /* 1-based line in the file (demo set: index + 1) */
    char *id;                    /* "" when the line has no usable id; never NULL */
    int32_t *prompt_ids;         /* (n_prompt) */
    int n_prompt;
    int max_new_tokens;          /* after the max_position_embeddings cap */
    int requested_new_tokens;    /* as written (0 when invalid) */
    mr_sampling_params sampling;
    bool ignore_eos;
    double arrival_ms;           /* < 0: submit at once */
    char *error;                 /* NULL when valid, else "line N: problem" */
} mr_req_spec;

typedef struct mr_req_set {
    mr_req_spec *items;          /* in input order, blank lines skipped */
    int n;
    int n_invalid;
    bool has_arrivals;           /* some request has arrival_ms */
} mr_req_set;

/* Parse one line (no newline) into *out. Returns MR_OK when the request is
 * valid; otherwise MR_EINVAL with out->error set (and also readable through
 * mr_last_error()). MR_ENOMEM is the only status that leaves *out empty.
 * Duplicate ids are not checked here (see mr_requests_parse_text). */
mr_status mr_requests_parse_line(const char *text, size_t len, int line_no, const mr_config *cfg,
                                 mr_req_spec *out);

/* Parse a whole jsonl text: every non-blank line becomes one item, valid or
 * not; the second and later lines carrying an id already seen get
 * "line N: duplicate id 'x' (first on line M)". Fails only on allocation. */
mr_status mr_requests_parse_text(const char *text, size_t len, const mr_config *cfg,
                                 mr_req_set *out);

/* Read and parse a jsonl file. MR_EIO (message names the path) when it
 * cannot be read; bad lines are items with errors, not failures. */
mr_status mr_requests_load(const char *path, const mr_config *cfg, mr_req_set *out);

/* The built-in demo set: 8 requests with fixed ids ("demo-0" .. "demo-7"),
 * prompts of 1 to 40 tokens and 4 to 24 new tokens, mixed greedy and sampled;
 * token ids are taken modulo vocab_size so the set is valid for any config
 * (designed for the built-in tiny model: vocab 256, 256 positions). */
mr_status mr_requests_demo(const mr_config *cfg, mr_req_set *out);

void mr_req_set_free(mr_req_set *set); /* accepts NULL and empty sets */

#endif
