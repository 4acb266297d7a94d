/* common/timer.h — monotonic wall clock and process CPU time, in seconds. */
#ifndef MR_TIMER_H
#define MR_TIMER_H

double mr_now(void);         /* CLOCK_MONOTONIC */
double mr_cpu_seconds(void); /* user + sys of this process */

#endif
