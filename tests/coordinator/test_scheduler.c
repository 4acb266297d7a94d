/* tests/coordinator/test_scheduler.c — rank choice (coordinator/scheduler.h):
 * decode = most free KV blocks, prefill = fewest queued prompt tokens, ties →
 * lowest rank, dead ranks never chosen, Status frames correct the estimate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "coordinator/scheduler.h"

/* Cluster of the launcher's shape: rank 0 coordinator, prefill 1-2, decode 3-4. */
static mr_sched make(int kv_blocks, int block_tokens)
{
    static const int prefill[] = {1, 2}, decode[] = {3, 4};
    mr_sched s;
    assert_int_equal(mr_sched_init(&s, prefill, 2, decode, 2, kv_blocks, block_tokens), MR_OK);
    return s;
}

static void pick(const mr_sched *s, int want_prefill, int want_decode)
{
    int p = -1, d = -1;
    assert_int_equal(mr_sched_pick(s, 1, &p, &d), MR_OK);
    assert_int_equal(p, want_prefill);
    assert_int_equal(d, want_decode);
}

static void test_blocks_are_rounded_up(void **state)
{
    (void)state;
    mr_sched s = make(100, 16);
    assert_int_equal(mr_sched_blocks_for(&s, 10, 6), 1);
    assert_int_equal(mr_sched_blocks_for(&s, 10, 7), 2);
    assert_int_equal(mr_sched_blocks_for(&s, 1, 1), 1);
    assert_int_equal(mr_sched_blocks_for(&s, 200, 57), 17);
    mr_sched_free(&s);
}

static void test_ties_go_to_the_lowest_rank(void **state)
{
    (void)state;
    mr_sched s = make(100, 16);
    pick(&s, 1, 3);
    mr_sched_free(&s);
}

static void test_decode_with_most_free_blocks_and_prefill_with_fewest_tokens(void **state)
{
    (void)state;
    mr_sched s = make(100, 16);
    mr_sched_admit(&s, 1, 3, 50, 10); /* rank 1: 50 tokens queued; rank 3: 90 free */
    pick(&s, 2, 4);
    mr_sched_admit(&s, 2, 4, 20, 30); /* rank 2: 20 tokens; rank 4: 70 free */
    pick(&s, 2, 3);
    mr_sched_prefill_done(&s, 1, 50); /* rank 1 back to 0 tokens */
    mr_sched_release_decode(&s, 4, 30); /* rank 4 back to 100 free */
    pick(&s, 1, 4);
    assert_int_equal(mr_sched_decode_free(&s.decode[0]), 90);
    assert_int_equal(mr_sched_decode_free(&s.decode[1]), 100);
    mr_sched_free(&s);
}

static void test_status_corrects_the_estimate(void **state)
{
    (void)state;
    mr_sched s = make(100, 16);
    /* rank 3 reports only 40 free (memory held by something we did not book) */
    mr_sched_on_status(&s, 3, 40, 100, 0, 2);
    pick(&s, 1, 4);
    assert_int_equal(mr_sched_decode_free(&s.decode[0]), 40);
    /* admissions after the report count against it until the next one */
    mr_sched_admit(&s, 1, 3, 5, 15);
    assert_int_equal(mr_sched_decode_free(&s.decode[0]), 25);
    mr_sched_on_status(&s, 3, 80, 100, 0, 1);
    /* own accounting (100 - 15 = 85) vs report (80): the smaller wins */
    assert_int_equal(mr_sched_decode_free(&s.decode[0]), 80);
    /* a report never lifts the estimate above own accounting */
    mr_sched_on_status(&s, 3, 100, 100, 0, 0);
    assert_int_equal(mr_sched_decode_free(&s.decode[0]), 85);
    /* total_kv_blocks from Status replaces the pool size */
    mr_sched_on_status(&s, 4, 500, 500, 0, 0);
    assert_int_equal(mr_sched_max_pool(&s), 500);
    pick(&s, 2, 4);
    mr_sched_free(&s);
}

static void test_dead_ranks_are_never_chosen(void **state)
{
    (void)state;
    mr_sched s = make(100, 16);
    assert_true(mr_sched_mark_dead(&s, 3));
    assert_false(mr_sched_mark_dead(&s, 3));  /* once */
    assert_false(mr_sched_mark_dead(&s, 99)); /* not in the table */
    mr_sched_admit(&s, 2, 4, 10, 90);         /* rank 4 nearly full, still the only one */
    pick(&s, 1, 4);
    assert_true(mr_sched_mark_dead(&s, 1));
    pick(&s, 2, 4);
    assert_int_equal(mr_sched_live_decode(&s), 1);
    assert_int_equal(mr_sched_live_prefill(&s), 1);
    assert_true(mr_sched_mark_dead(&s, 4));
    int p, d;
    assert_int_equal(mr_sched_pick(&s, 1, &p, &d), MR_EPEER);
    assert_string_equal(mr_last_error(), "no live decode rank");
    assert_int_equal(mr_sched_max_pool(&s), 0);
    mr_sched_free(&s);
}

static void test_no_live_prefill_rank_is_reported(void **state)
{
    (void)state;
    mr_sched s = make(100, 16);
    mr_sched_mark_dead(&s, 1);
    mr_sched_mark_dead(&s, 2);
    int p, d;
    assert_int_equal(mr_sched_pick(&s, 1, &p, &d), MR_EPEER);
    assert_string_equal(mr_last_error(), "no live prefill rank");
    mr_sched_free(&s);
}

static void test_overbooked_rank_still_ranks_by_free_blocks(void **state)
{
    (void)state;
    mr_sched s = make(10, 16);
    mr_sched_admit(&s, 1, 3, 1, 25); /* decode queues what does not fit: -15 free */
    mr_sched_admit(&s, 1, 4, 1, 12); /* -2 free */
    assert_int_equal(mr_sched_decode_free(&s.decode[0]), -15);
    pick(&s, 2, 4);
    mr_sched_free(&s);
}

static void test_request_goes_to_a_pool_that_can_hold_it(void **state)
{
    (void)state;
    mr_sched s = make(10, 16);
    mr_sched_on_status(&s, 4, 40, 40, 0, 0); /* rank 4 has a larger pool but less free room */
    mr_sched_admit(&s, 1, 4, 1, 35);          /* rank 4: 5 free, rank 3: 10 free */
    int p, d;
    assert_int_equal(mr_sched_pick(&s, 8, &p, &d), MR_OK);
    assert_int_equal(d, 3);
    assert_int_equal(mr_sched_pick(&s, 20, &p, &d), MR_OK); /* only rank 4's pool holds 20 */
    assert_int_equal(d, 4);
    assert_int_equal(mr_sched_pick(&s, 41, &p, &d), MR_ERANGE);
    assert_string_equal(mr_last_error(),
                        "request needs 41 KV blocks (16 tokens per block) but a decode pool holds 40");
    mr_sched_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocks_are_rounded_up),
        cmocka_unit_test(test_ties_go_to_the_lowest_rank),
        cmocka_unit_test(test_decode_with_most_free_blocks_and_prefill_with_fewest_tokens),
        cmocka_unit_test(test_status_corrects_the_estimate),
        cmocka_unit_test(test_dead_ranks_are_never_chosen),
        cmocka_unit_test(test_no_live_prefill_rank_is_reported),
        cmocka_unit_test(test_overbooked_rank_still_ranks_by_free_blocks),
        cmocka_unit_test(test_request_goes_to_a_pool_that_can_hold_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
