/* cli/plan_capacity_svg.h — `moerun plan capacity --svg`: the plan as plots. */
#ifndef MR_PLAN_CAPACITY_SVG_H
#define MR_PLAN_CAPACITY_SVG_H

#include "../common/status.h"
#include "../planner/capacity.h"

/* Two panels: prefill TTFT p50/p90/p99 against prefill nodes (the candidate
 * rows) with the TTFT target, and the decode step time (TPOT) against batch
 * per GPU at the answer's EP size and the trace's decode context, with the
 * TPOT target and the answer's batch marked. MR_EIO names the file. */
mr_status mr_cap_write_svg(const mr_cap_model *m, const mr_cap_plan *p, const char *path);

#endif
