/* bench/bench_layer.h — `moerun bench layer` (see bench_layer.c). */
#ifndef MR_BENCH_LAYER_H
#define MR_BENCH_LAYER_H

/* argv[0] = "bench", argv[1] = "layer"; returns the exit status. */
int mr_bench_layer(int argc, char **argv);

#endif
