/* bench/bench_sys.c — see bench_sys.h. */
#include "bench_sys.h"

#include "../common/blas_core.h"

#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- machine --------------------------------------------------------------- */

static void copy_trimmed(char *dst, size_t cap, const char *src)
{
    while (*src == ' ' || *src == '\t') src++;
    snprintf(dst, cap, "%s", src);
    size_t len = strlen(dst);
    while (len > 0 && (dst[len - 1] == '\n' || dst[len - 1] == ' ')) dst[--len] = '\0';
}

static void cpu_model(char *dst, size_t cap)
{
    snprintf(dst, cap, "unknown");
    FILE *fp = fopen("/proc/cpuinfo", "r");
    if (fp == NULL) return;
    char line[512];
    while (fgets(line, sizeof line, fp) != NULL) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            copy_trimmed(dst, cap, colon + 1);
            break;
        }
    }
    fclose(fp);
}

/* Size of the level-3 (else highest) cache of cpu0 from sysfs, in bytes. */
static size_t llc_size(void)
{
    size_t best = 0;
    int best_level = 0;
    for (int idx = 0; idx < 8; idx++) {
        char path[128], text[64];
        int level = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", idx);
        FILE *fp = fopen(path, "r");
        if (fp == NULL) break;
        if (fscanf(fp, "%d", &level) != 1) level = 0;
        fclose(fp);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", idx);
        fp = fopen(path, "r");
        if (fp == NULL) continue;
        if (fgets(text, sizeof text, fp) != NULL && level >= best_level) {
            char *end = NULL;
            unsigned long long value = strtoull(text, &end, 10);
            if (end != NULL && (*end == 'K' || *end == 'k')) value <<= 10;
            if (end != NULL && (*end == 'M' || *end == 'm')) value <<= 20;
            best = (size_t)value;
            best_level = level;
        }
        fclose(fp);
    }
    if (best == 0) {
        long sc = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (sc > 0) best = (size_t)sc;
    }
    return best;
}

void bench_machine_get(bench_machine *m)
{
    memset(m, 0, sizeof *m);
    cpu_model(m->cpu, sizeof m->cpu);
    const char *core = openblas_get_corename();
    const char *config = openblas_get_config();
    snprintf(m->corename, sizeof m->corename, "%s", core ? core : "?");
    copy_trimmed(m->blas_config, sizeof m->blas_config, config ? config : "?");
    const char *env = getenv("OPENBLAS_CORETYPE");
    snprintf(m->coretype_env, sizeof m->coretype_env, "%s", env ? env : "(unset)");
    env = getenv("OPENBLAS_L2_SIZE");
    snprintf(m->l2_env, sizeof m->l2_env, "%s", env ? env : "(unset)");
#if defined(__x86_64__) || defined(__i386__)
    const char *best = mr_blas_best_core();
    if (best) snprintf(m->forced_core, sizeof m->forced_core, "%s", best);
    snprintf(m->isa, sizeof m->isa, "%s%s%s", __builtin_cpu_supports("avx512f") ? "avx512f " : "",
             __builtin_cpu_supports("avx2") ? "avx2 " : "",
             __builtin_cpu_supports("fma") ? "fma" : "");
#else
    snprintf(m->isa, sizeof m->isa, "(not x86)");
#endif
    m->llc_bytes = llc_size();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    m->n_cpus = cpus > 0 ? (int)cpus : 1;
}

/* ---- read bandwidth -------------------------------------------------------- */

typedef float bench_v16 __attribute__((vector_size(64)));

/* Σ p[0..n): four independent 64-byte accumulators keep the loads in flight. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static float read_sum(const float *p, size_t n)
{
    bench_v16 a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        bench_v16 v0, v1, v2, v3;
        memcpy(&v0, p + i, sizeof v0);
        memcpy(&v1, p + i + 16, sizeof v1);
        memcpy(&v2, p + i + 32, sizeof v2);
        memcpy(&v3, p + i + 48, sizeof v3);
        a0 += v0;
        a1 += v1;
        a2 += v2;
        a3 += v3;
    }
    bench_v16 a = a0 + a1 + a2 + a3;
    float lanes[16], sum = 0.0f;
    memcpy(lanes, &a, sizeof lanes);
    for (int l = 0; l < 16; l++) sum += lanes[l];
    for (; i < n; i++) sum += p[i];
    return sum;
}

typedef struct read_part {
    const float *p;
    size_t n;
    float sum;
} read_part;

static void *read_main(void *arg)
{
    read_part *part = arg;
    part->sum = read_sum(part->p, part->n);
    return NULL;
}

float bench_read_pass(const float *p, size_t n_floats, int threads)
{
    enum { MAX_PARTS = 64 };
    if (threads < 1) threads = 1;
    if (threads > MAX_PARTS) threads = MAX_PARTS;
    read_part parts[MAX_PARTS];
    pthread_t tid[MAX_PARTS];
    bool started[MAX_PARTS] = { false };
    for (int t = 0; t < threads; t++) {
        size_t b0 = n_floats * (size_t)t / (size_t)threads;
        size_t b1 = n_floats * (size_t)(t + 1) / (size_t)threads;
        parts[t] = (read_part){ .p = p + b0, .n = b1 - b0, .sum = 0.0f };
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tid[t], NULL, read_main, &parts[t]) == 0;
    read_main(&parts[0]);
    float sum = parts[0].sum;
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            read_main(&parts[t]);
        sum += parts[t].sum;
    }
    return sum;
}

/* ---- child process --------------------------------------------------------- */

/* environ without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, plus `extra` (or not). */
static char **child_env(const char *extra)
{
    size_t n = 0;
    while (environ[n] != NULL) n++;
    char **env = calloc(n + 2, sizeof *env);
    if (env == NULL) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "OPENBLAS_CORETYPE=", 18) == 0) continue;
        if (strncmp(environ[i], "OPENBLAS_L2_SIZE=", 17) == 0) continue;
        env[k++] = environ[i];
    }
    if (extra != NULL) env[k++] = (char *)extra;
    env[k] = NULL;
    return env;
}

int bench_run_child(const char *coretype, char *const args[], char **out)
{
    *out = NULL;
    char extra[96];
    if (coretype != NULL) snprintf(extra, sizeof extra, "OPENBLAS_CORETYPE=%s", coretype);
    char *argv[32] = { "moerun", "bench", "ops" };
    int argc = 3;
    for (int i = 0; args[i] != NULL && argc < 31; i++) argv[argc++] = args[i];
    argv[argc] = NULL;

    char **env = child_env(coretype != NULL ? extra : NULL);
    int fds[2] = { -1, -1 };
    if (env == NULL || pipe(fds) != 0) {
        fprintf(stderr, "moerun bench: cannot start baseline child: %s\n", strerror(errno));
        free(env);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(fds[1]);
    if (rc != 0) {
        fprintf(stderr, "moerun bench: posix_spawn /proc/self/exe: %s\n", strerror(rc));
        close(fds[0]);
        return -1;
    }
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ssize_t got = 0;
    while (buf != NULL && (got = read(fds[0], buf + len, cap - len - 1)) != 0) {
        if (got < 0) {
            if (errno == EINTR) continue;
            break;
        }
        len += (size_t)got;
        if (cap - len < 1024) {
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) break;
            buf = bigger;
            cap *= 2;
        }
    }
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (buf == NULL || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "moerun bench: baseline child (OPENBLAS_CORETYPE=%s) failed\n",
                coretype ? coretype : "(unset)");
        free(buf);
        return -1;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}
