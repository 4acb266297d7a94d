/* bench/bench_cluster.h — `moerun bench cluster` and `moerun bench transport`
 * (bench_cluster.c): benchmarks that run the cluster launcher scripts. */
#ifndef MR_BENCH_CLUSTER_H
#define MR_BENCH_CLUSTER_H

#include <stddef.h>

#include "../common/status.h"

/* argv[0] = "bench", argv[1] = "cluster"; returns the exit status. */
int mr_bench_cluster(int argc, char **argv);

/* `moerun bench transport ARGS`: exec launch/moerun-bench-transport ARGS. */
int bench_exec_transport(int argc, char **argv);

/* Path of launch/<name> next to this binary (the build dir's copy, else the
 * source tree); build_dir receives the directory of the running executable. */
mr_status mr_bench_find_script(const char *name, char *out, size_t len, char *build_dir,
                               size_t blen);

#endif
