/* common/blas_core.h — make OpenBLAS use the kernels this CPU can run.
 *
 * OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernel set when the library is
 * loaded, from its own CPU table. On CPUs newer than that table it falls back
 * to old SSE kernels (measured on this project's Xeon: "Prescott", 3-5x slower
 * SGEMM than its AVX-512 "Cooperlake" kernels). The only way to choose is the
 * OPENBLAS_CORETYPE environment variable, read before main() runs, so the fix
 * is to re-execute the process once with it set.
 *
 * Never overrides a user's OPENBLAS_CORETYPE; re-executes at most once
 * (marker variable MOERUN_BLAS_CORE_SET). x86-64 only; elsewhere a no-op.
 */
#ifndef MR_BLAS_CORE_H
#define MR_BLAS_CORE_H

/* The best OpenBLAS kernel set for this CPU's flags: "Cooperlake"
 * (AVX-512 + BF16), "SkylakeX" (AVX-512), "Haswell" (AVX2 + FMA), or NULL. */
const char *mr_blas_best_core(void);

/* If OPENBLAS_CORETYPE is unset and the loaded kernel set is weaker than
 * mr_blas_best_core(), set it and execv(this executable, argv). Returns when
 * there is nothing to do (or the exec failed: then nothing changed). Call
 * first thing in main, before any thread or MPI exists. */
void mr_blas_pick_core(char **argv);

#endif
