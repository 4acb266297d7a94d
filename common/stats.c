/* common/stats.c — see stats.h. */
#include "stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void mr_sort_doubles(double *v, size_t n)
{
    qsort(v, n, sizeof(double), cmp_double);
}

double mr_percentile(const double *values, int n, double p)
{
    if (n <= 0) return 0.0;
    double *v = malloc(sizeof(double) * (size_t)n);
    if (!v) return NAN;
    memcpy(v, values, sizeof(double) * (size_t)n);
    mr_sort_doubles(v, (size_t)n);
    if (p < 0) p = 0;
    if (p > 100) p = 100;
    double pos = p / 100.0 * (n - 1);
    int lo = (int)floor(pos);
    int hi = lo + 1 < n ? lo + 1 : lo;
    double result = v[lo] + (v[hi] - v[lo]) * (pos - lo);
    free(v);
    return result;
}

void mr_fmt_bytes(unsigned long long b, char *buf, size_t len)
{
    if (b >= (1ull << 30)) snprintf(buf, len, "%.2f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, len, "%.2f MiB", (double)b / (1ull << 20));
    else if (b >= (1ull << 10)) snprintf(buf, len, "%.1f KiB", (double)b / (1ull << 10));
    else snprintf(buf, len, "%llu B", b);
}
