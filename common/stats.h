/* common/stats.h — sorting and percentiles the way people read them (numpy's default). */
#ifndef MR_STATS_H
#define MR_STATS_H

#include <stddef.h>

/* Sort v[0..n) ascending in place (qsort; NaN-free input expected). */
void mr_sort_doubles(double *v, size_t n);

/* The p-th percentile, p in [0, 100] (clamped), of values[0..n): linear
 * interpolation between the closest ranks, numpy.percentile's default. n 0
 * → 0; NaN when out of memory. Sorts a copy; values untouched. */
double mr_percentile(const double *values, int n, double p);

#endif
