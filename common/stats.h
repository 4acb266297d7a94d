/* common/stats.h — percentiles the way people read them (numpy's default). */
#ifndef MR_STATS_H
#define MR_STATS_H

/* The p-th percentile, p in [0, 100] (clamped), of values[0..n): linear
 * interpolation between the closest ranks, numpy.percentile's default. n 0
 * → 0; NaN when out of memory. Sorts a copy; values untouched. */
double mr_percentile(const double *values, int n, double p);

#endif
