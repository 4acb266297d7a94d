/* test_tp_bootstrap_mismatch — 3 ranks; rank 2 disagrees.
 *
 *   test_tp_bootstrap_mismatch model   rank 2 has another model_hash
 *   test_tp_bootstrap_mismatch build   rank 2 has another build_id
 *   test_tp_bootstrap_mismatch options rank 2 passes invalid options
 *
 * test_every_rank_fails_tp_init_naming_the_odd_rank: tp_init returns an error
 * on every rank (not only on rank 2) whose message names "rank 2", within a
 * few seconds, and the process can exit normally afterwards. */
#include "tp_test.h"

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "model";
    const char *env_rank = getenv("OMPI_COMM_WORLD_RANK");
    int my_rank = env_rank ? atoi(env_rank) : -1;
    tpt_rank = my_rank;
    CHECK(my_rank >= 0, "OMPI_COMM_WORLD_RANK not set");
    tp_options o = tp_options_default();
    o.model_hash = 0xdeadbeef;
    o.build_id = "moerun 0.1.0 abc123";
    bool odd = my_rank == 2;
    if (odd && !strcmp(what, "model")) o.model_hash = 0xdeadbeee;
    if (odd && !strcmp(what, "build")) o.build_id = "moerun 0.1.0 abc124";
    if (odd && !strcmp(what, "options")) o.heartbeat_timeout_s = 0;

    tp_ctx *ctx = NULL;
    double t0 = mr_now();
    mr_status st = tp_init(&argc, &argv, TP_ROLE_OTHER, &o, &ctx);
    double dt = mr_now() - t0;
    fprintf(stderr, "[rank %d] tp_init -> %s after %.2f s: %s\n", my_rank, mr_status_name(st), dt,
            mr_last_error());
    CHECK(st != MR_OK && ctx == NULL, "tp_init succeeded despite a %s mismatch", what);
    CHECK(strstr(mr_last_error(), "rank 2") != NULL, "message does not name rank 2");
    const char *field = !strcmp(what, "model") ? "model_hash" : !strcmp(what, "build") ? "build_id"
                                                                                     : "heartbeat";
    CHECK(strstr(mr_last_error(), field) != NULL, "message does not name %s", field);
    CHECK(dt < 10, "tp_init took %.1f s to fail", dt);
    tpt_pass(my_rank);
    return 1; /* what a role binary does: exit non-zero after a failed tp_init */
}
