/* common/stats.h — sorting and percentiles the way people read them (numpy's
 * default), and byte counts the way people read them. */
#ifndef MR_STATS_H
#define MR_STATS_H

#include <stddef.h>

/* Sort v[0..n) ascending in place (qsort; NaN-free input expected). */
void mr_sort_doubles(double *v, size_t n);

/* The p-th percentile, p in [0, 100] (clamped), of values[0..n): linear
 * interpolation between the closest ranks, numpy.percentile's default. n 0
 * → 0; NaN when out of memory. Sorts a copy; values untouched. */
double mr_percentile(const double *values, int n, double p);

/* b as "123 B", "4.5 KiB", "12.34 MiB" or "1.23 GiB" into buf (len bytes). */
void mr_fmt_bytes(unsigned long long b, char *buf, size_t len);

#endif
