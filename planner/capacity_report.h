/* planner/capacity_report.h — the decode layout comparison of `moerun plan
 * capacity` (mr_cap_plan.layouts, planner/capacity.h) as text and as JSON,
 * for cli/cmd_plan_capacity.c, which prints the rest of the plan.
 *
 * Reads the plan only; no globals. mr_cap_print_layouts writes to `out`;
 * mr_cap_layouts_json returns a new cJSON object the caller owns (NULL when
 * out of memory). The text is documented in docs/CAPACITY.md.
 */
#ifndef MR_CAPACITY_REPORT_H
#define MR_CAPACITY_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include "capacity.h"

struct cJSON;

/* "EP on decode", "disaggregated", "none". */
const char *mr_cap_layout_name(mr_cap_layout layout);
/* What stops one node fewer, in words: "weights", "expert weights", "EP
 * group size", "KV memory", "batch cap", "HBM bandwidth", "compute",
 * "NVLink", "network". */
const char *mr_cap_bind_name(const mr_cap_layout_row *r);
/* What binds and where the row's own step goes, for the table:
 * e.g. "KV memory; step 71% HBM, 29% network" (AFD adds the expert GPUs'
 * share: " (experts 40%)"). Truncated to cap bytes. */
void mr_cap_layout_note(const mr_cap_layout_row *r, char *buf, size_t cap);

/* The "## decode layout" section: legend, one row per layout, and the line
 * "decode layout: <winner> (N nodes vs M)". */
void mr_cap_print_layouts(FILE *out, const mr_cap_model *m, const mr_cap_plan *p);
/* {"winner", "ep_on_decode": {...}, "disaggregated": {...}}. */
struct cJSON *mr_cap_layouts_json(const mr_cap_model *m, const mr_cap_plan *p);

#endif
