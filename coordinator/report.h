/* coordinator/report.h — what the coordinator writes when the run ends.
 *
 *  - results jsonl: one line per input line, in input order:
 *      {"id","output_ids","finish_reason":"stop|length|error","error":"",
 *       "prompt_tokens","ttft_ms","tpot_ms","e2e_ms"}
 *    (error is "" when none; ttft_ms 0 without a token, tpot_ms 0 with < 2).
 *  - summary json (mr_report_summary_json):
 *      {"requests","completed","failed","wall_s","prompt_tokens","output_tokens",
 *       "output_tok_s",
 *       "ttft_ms":{"p50","p90","p99"},"tpot_ms":{...},"e2e_ms":{...},
 *       "roles":{"coordinator"|"prefill"|"decode"|"expert":
 *                {"ranks","reported","cpu_s","compute_s","transfer_s","wait_s",
 *                 "tokens_processed"}},
 *       "ranks":[{"rank","role","alive","reported","cpu_s","compute_s","transfer_s",
 *                 "wait_s","tokens_processed","frames_rejected"}],
 *       "links":[{"src","dst","bytes","msgs"}],      (pairs with traffic only)
 *       "frames_rejected","ignored_events","dead_ranks":[...],
 *       "expert_load":{"<layer>":[tokens per expert]},
 *       "expert_imbalance":{"<layer>": max/mean},
 *       ...every member of rep->extra, e.g. "rebalance" (coordinator/rebalance.h)}
 *    Percentiles are over completed requests (TPOT: those with >= 2 tokens),
 *    linear interpolation between closest ranks (numpy's default); 0 when empty.
 *  - a human table of the same on stderr (mr_report_print_table).
 *  - the status file: "0\n" when every request completed and no rank died,
 *    else "1\n<reason>\n".
 *
 * Pure logic (no transport), thread-compatible. Returned strings are malloc'd
 * and owned by the caller.
 */
#ifndef MR_COORD_REPORT_H
#define MR_COORD_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "common/stats.h"
#include "common/status.h"
#include "expert_load.h"
#include "tracker.h"


/* What one rank reported at shutdown (RankStats), or that it did not. */
typedef struct mr_rank_report {
    int rank;
    char role[16];               /* "coordinator" | "prefill" | "decode" | "expert" */
    bool alive;                  /* false once reported dead */
    bool reported;               /* RankStats received (or, rank 0, filled in) */
    double cpu_s, compute_s, transfer_s, wait_s;
    uint64_t tokens_processed, frames_rejected;
    uint64_t *link_bytes, *link_msgs;  /* (n_ranks) indexed by destination rank */
} mr_rank_report;

typedef struct mr_run_report {
    int n_ranks;
    mr_rank_report *ranks;       /* (n_ranks) indexed by rank */
    double wall_s;
    uint64_t frames_rejected;    /* coordinator's own rejected control frames */
    const mr_expert_load *load;  /* routed tokens per (layer, expert), or NULL */
    const cJSON *extra;          /* more top-level summary sections (caller's), or NULL */
} mr_run_report;

mr_status mr_run_report_init(mr_run_report *rep, int n_ranks);
void mr_run_report_free(mr_run_report *rep); /* accepts NULL */

/* Copy a RankStats (arrays may be shorter or longer than n_ranks). */
mr_status mr_run_report_set(mr_run_report *rep, int rank, const char *role, double cpu_s,
                            double compute_s, double transfer_s, double wait_s,
                            uint64_t tokens_processed, uint64_t frames_rejected,
                            const uint64_t *link_bytes, int n_bytes, const uint64_t *link_msgs,
                            int n_msgs);

int mr_run_report_dead_count(const mr_run_report *rep);

/* One result line (no trailing newline). */
char *mr_report_result_line(const mr_rq_state *r);
/* Every result line, in input order, each followed by '\n'. */
mr_status mr_report_write_results(const mr_tracker *t, FILE *fp);

/* Summary as pretty JSON text. */
char *mr_report_summary_json(const mr_tracker *t, const mr_run_report *rep);
void mr_report_print_table(const mr_tracker *t, const mr_run_report *rep, FILE *fp);

/* Exit status (0/1) and the reason line ("" when 0) written to `reason`. */
int mr_report_exit_status(const mr_tracker *t, const mr_run_report *rep, char *reason,
                          size_t reason_len);
mr_status mr_report_write_status(const char *path, int status, const char *reason);

#endif
