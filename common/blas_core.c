#include "blas_core.h"

#include <cblas.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *mr_blas_best_core(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    if (avx512 && __builtin_cpu_supports("avx512bf16")) return "Cooperlake";
    if (avx512) return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

/* Is `loaded` at least as capable as `best`? */
static bool good_enough(const char *loaded, const char *best)
{
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const avx2_cores[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake",
                                             "SapphireRapids", NULL};
    const char *const *ok = strcmp(best, "Haswell") == 0 ? avx2_cores : avx512_cores;
    for (int i = 0; ok[i]; i++)
        if (strcasecmp(loaded, ok[i]) == 0) return true;
    return false;
}

void mr_blas_pick_core(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("MOERUN_BLAS_CORE_SET")) return;
    const char *best = mr_blas_best_core();
    const char *loaded = openblas_get_corename();
    if (!best || !loaded || good_enough(loaded, best)) return;
    /* exec the real path, not /proc/self/exe, so the process keeps its name
     * (ps, pgrep, mpirun's messages) */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = '\0';
    setenv("OPENBLAS_CORETYPE", best, 1);
    setenv("MOERUN_BLAS_CORE_SET", loaded, 1);
    execv(exe, argv);
    /* exec failed: carry on with the kernels we have */
    unsetenv("OPENBLAS_CORETYPE");
}
