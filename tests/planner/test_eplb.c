/* tests/planner/test_eplb.c — expert placement with redundant replicas. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "planner/eplb.h"

static mr_eplb_layer *layer_buf(void)
{
    static mr_eplb_layer l;
    memset(&l, 0, sizeof l);
    return &l;
}

static void test_hottest_experts_get_the_extra_replicas(void **state)
{
    (void)state;
    uint64_t load[16];
    for (int e = 0; e < 16; e++) load[e] = 100;
    load[3] = 900; /* two hot experts */
    load[11] = 500;
    mr_eplb_layer *l = layer_buf();
    assert_int_equal(mr_eplb_balance(load, 16, 4, 3, l), MR_OK);
    assert_int_equal(l->replicas[3], 3);  /* 900/2 = 450 > 500/2 after 11 got one */
    assert_int_equal(l->replicas[11], 2);
    int total = 0;
    for (int e = 0; e < 16; e++) total += l->replicas[e];
    assert_int_equal(total, 19);
}

static void test_replicas_land_on_distinct_ranks_within_slots(void **state)
{
    (void)state;
    uint64_t load[32];
    for (int e = 0; e < 32; e++) load[e] = (uint64_t)(1 + (e * 37) % 97) * (e % 5 == 0 ? 20 : 1);
    mr_eplb_layer *l = layer_buf();
    assert_int_equal(mr_eplb_balance(load, 32, 6, 10, l), MR_OK);
    int used[6] = {0};
    for (int e = 0; e < 32; e++)
        for (int i = 0; i < l->replicas[e]; i++) {
            int r = l->rank_of[e][i];
            assert_true(r >= 0 && r < 6);
            used[r]++;
            for (int j = 0; j < i; j++) assert_int_not_equal(l->rank_of[e][j], r);
        }
    for (int r = 0; r < 6; r++) assert_true(used[r] <= (32 + 10 + 5) / 6);
}

static void test_plan_is_more_balanced_than_round_robin_on_skewed_load(void **state)
{
    (void)state;
    uint64_t load[64];
    for (int e = 0; e < 64; e++) load[e] = e < 4 ? 5000 : 100 + (uint64_t)e;
    mr_eplb_layer *l = layer_buf();
    assert_int_equal(mr_eplb_balance(load, 64, 8, 8, l), MR_OK);
    double rr = mr_eplb_round_robin_imbalance(load, 64, 8);
    double planned = mr_eplb_imbalance(l);
    assert_true(rr > 1.6);      /* round robin: hot experts 0..3 on ranks 0..3 (~1.70) */
    assert_true(planned < 1.2); /* 3 replicas per hot expert, 9 per rank (~1.19) */
    /* no token is lost: the ranks carry the total load */
    double sum = 0, want = 0;
    for (int r = 0; r < 8; r++) sum += l->rank_load[r];
    for (int e = 0; e < 64; e++) want += (double)load[e];
    assert_true(sum > want - 1e-6 && sum < want + 1e-6);
}

static void test_impossible_requests_are_errors(void **state)
{
    (void)state;
    uint64_t load[4] = {1, 2, 3, 4};
    mr_eplb_layer *l = layer_buf();
    assert_int_equal(mr_eplb_balance(load, 4, 2, 5, l), MR_EINVAL); /* > 2 replicas on 2 ranks */
    assert_int_equal(mr_eplb_balance(load, 0, 2, 0, l), MR_EINVAL);
    assert_int_equal(mr_eplb_balance(load, 4, 0, 0, l), MR_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hottest_experts_get_the_extra_replicas),
        cmocka_unit_test(test_replicas_land_on_distinct_ranks_within_slots),
        cmocka_unit_test(test_plan_is_more_balanced_than_round_robin_on_skewed_load),
        cmocka_unit_test(test_impossible_requests_are_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
