/* bench/bench_cluster.h — `moerun bench cluster` (see bench_cluster.c). */
#ifndef MR_BENCH_CLUSTER_H
#define MR_BENCH_CLUSTER_H

/* argv[0] = "bench", argv[1] = "cluster"; returns the exit status. */
int mr_bench_cluster(int argc, char **argv);

#endif
