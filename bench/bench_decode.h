/* bench/bench_decode.h — `moerun bench decode` (see bench_decode.c). */
#ifndef MR_BENCH_DECODE_H
#define MR_BENCH_DECODE_H

/* argv[0] = "bench", argv[1] = "decode"; returns the exit status. */
int mr_bench_decode(int argc, char **argv);

#endif
