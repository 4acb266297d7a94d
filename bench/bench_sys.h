/* bench/bench_sys.h — machine facts, a DRAM read-bandwidth probe and child
 * processes for `moerun bench` (bench_ops.c).
 *
 * Everything here is for the benchmark command only; nothing is thread-safe
 * unless stated. Strings returned in structs are owned by the struct.
 */
#ifndef MR_BENCH_SYS_H
#define MR_BENCH_SYS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct bench_machine {
    char cpu[128];          /* "model name" of /proc/cpuinfo, or "unknown" */
    char corename[64];      /* openblas_get_corename() */
    char blas_config[256];  /* openblas_get_config() */
    char coretype_env[64];  /* OPENBLAS_CORETYPE as set, or "(unset)" */
    char l2_env[64];        /* OPENBLAS_L2_SIZE as set, or "(unset)" */
    char forced_core[32];   /* best OpenBLAS kernel for this CPU's flags, "" if none */
    char isa[64];           /* "avx512f avx2 fma" subset the CPU has */
    size_t llc_bytes;       /* last-level cache size, 0 when unknown */
    int n_cpus;             /* online CPUs */
} bench_machine;

/* Fills *m from /proc, sysfs, the environment and OpenBLAS. */
void bench_machine_get(bench_machine *m);

/* Read-only pass over n_floats floats at p with `threads` threads, each
 * summing its contiguous share; returns the sum (so the reads are not
 * optimized away). Thread-safe. */
float bench_read_pass(const float *p, size_t n_floats, int threads);

/* Runs this executable again as `moerun bench ops ARGS...` with
 * OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from the environment and,
 * when coretype is non-NULL, OPENBLAS_CORETYPE=coretype added. Collects its
 * stdout into *out (malloc'ed, NUL-terminated; caller frees). Returns 0 when
 * the child ran and exited 0, -1 otherwise (message on stderr). */
int bench_run_child(const char *coretype, char *const args[], char **out);

#endif
