/* tests/coordinator/test_tracker.c — request lives (coordinator/tracker.h):
 * tokens in order, every request ends exactly once, rank loss and timeouts
 * end the right requests, and the scheduler's bookings are released. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "coordinator/tracker.h"
#include "test_util.h"

enum { NONE = 0, STOP = 1, LENGTH = 2, ERROR = 3 };

typedef struct fixture {
    mr_config cfg;
    mr_req_set set;
    mr_sched sched;
    mr_tracker t;
} fixture;

/* Lines: a (valid), bad (invalid), b, c (valid). Ranks: prefill 1-2, decode 3-4. */
static int setup(void **state)
{
    static fixture f;
    memset(&f, 0, sizeof f);
    f.cfg = tiny_config();
    const char *text = "{\"id\":\"a\",\"prompt_ids\":[1,2,3],\"max_new_tokens\":4}\n"
                       "{\"id\":\"bad\",\"prompt_ids\":[],\"max_new_tokens\":4}\n"
                       "{\"id\":\"b\",\"prompt_ids\":[5],\"max_new_tokens\":20}\n"
                       "{\"id\":\"c\",\"prompt_ids\":[7,8],\"max_new_tokens\":2}\n";
    if (mr_requests_parse_text(text, strlen(text), &f.cfg, &f.set) != MR_OK) return -1;
    static const int prefill[] = {1, 2}, decode[] = {3, 4};
    if (mr_sched_init(&f.sched, prefill, 2, decode, 2, 100, 4) != MR_OK) return -1;
    if (mr_tracker_init(&f.t, &f.set, &f.sched, 10.0) != MR_OK) return -1;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    mr_tracker_free(&f->t);
    mr_sched_free(&f->sched);
    mr_req_set_free(&f->set);
    return 0;
}

/* Book and submit request i the way the coordinator does. */
static void submit(fixture *f, int i, int prefill, int decode, double at)
{
    const mr_req_spec *r = &f->set.items[i];
    int blocks = mr_sched_blocks_for(&f->sched, r->n_prompt, r->max_new_tokens);
    mr_sched_admit(&f->sched, prefill, decode, r->n_prompt, blocks);
    mr_tracker_submitted(&f->t, i, prefill, decode, blocks, at);
}

static void test_invalid_lines_end_at_once_with_their_error(void **state)
{
    fixture *f = *state;
    assert_int_equal(f->t.n, 4);
    assert_int_equal(f->t.n_done, 1);
    assert_int_equal(f->t.n_failed, 1);
    const mr_rq_state *bad = &f->t.reqs[1];
    assert_int_equal(bad->phase, MR_RQ_DONE);
    assert_int_equal(bad->end, MR_END_ERROR);
    assert_string_equal(bad->error, "line 2: \"prompt_ids\" is empty");
    assert_int_equal(mr_tracker_find(&f->t, "bad"), -1); /* invalid ids are not indexed */
    assert_int_equal(mr_tracker_find(&f->t, "c"), 3);
}

static void test_tokens_stream_in_order_and_timing_is_measured(void **state)
{
    fixture *f = *state;
    submit(f, 0, 1, 3, 10.0);
    assert_int_equal(f->sched.prefill[0].queued_tokens, 3);
    assert_int_equal(f->sched.decode[0].reserved_blocks, 2); /* ceil(7/4) */
    assert_true(mr_tracker_on_token(&f->t, 3, "a", 42, NONE, "", 10.5));
    assert_int_equal(f->sched.prefill[0].queued_tokens, 0); /* prefill done at first token */
    assert_true(mr_tracker_on_token(&f->t, 3, "a", 43, NONE, "", 10.6));
    assert_true(mr_tracker_on_token(&f->t, 3, "a", 44, NONE, "", 10.7));
    assert_true(mr_tracker_on_token(&f->t, 3, "a", 45, LENGTH, "", 10.8));
    const mr_rq_state *a = &f->t.reqs[0];
    assert_int_equal(a->phase, MR_RQ_DONE);
    assert_int_equal(a->end, MR_END_LENGTH);
    assert_int_equal(a->n_out, 4);
    int32_t want[] = {42, 43, 44, 45};
    assert_memory_equal(a->out_ids, want, sizeof want);
    assert_float_equal(mr_rq_ttft_ms(a), 500.0, 1e-6);
    assert_float_equal(mr_rq_tpot_ms(a), 100.0, 1e-6);
    assert_float_equal(mr_rq_e2e_ms(a), 800.0, 1e-6);
    assert_int_equal(f->sched.decode[0].reserved_blocks, 0);
    assert_int_equal(f->t.n_completed, 1);
    assert_int_equal(f->t.output_tokens, 4);
    /* a late event for an ended request is ignored */
    assert_false(mr_tracker_on_token(&f->t, 3, "a", 46, NONE, "", 11.0));
    assert_int_equal(a->n_out, 4);
    assert_false(mr_tracker_on_token(&f->t, 3, "nobody", 1, NONE, "", 11.0));
    assert_int_equal(f->t.n_ignored_events, 2);
}

static void test_single_token_has_zero_tpot_and_stop_ends(void **state)
{
    fixture *f = *state;
    submit(f, 3, 2, 4, 1.0);
    assert_true(mr_tracker_on_token(&f->t, 4, "c", 1, STOP, "", 1.25));
    const mr_rq_state *c = &f->t.reqs[3];
    assert_int_equal(c->end, MR_END_STOP);
    assert_int_equal(c->n_out, 1);
    assert_float_equal(mr_rq_tpot_ms(c), 0.0, 0);
    assert_float_equal(mr_rq_ttft_ms(c), 250.0, 1e-9);
}

static void test_events_from_other_ranks_are_ignored(void **state)
{
    fixture *f = *state;
    submit(f, 3, 2, 4, 1.0);
    assert_false(mr_tracker_on_token(&f->t, 3, "c", 9, NONE, "", 1.1)); /* not its decode */
    assert_int_equal(f->t.reqs[3].n_out, 0);
    /* its prefill rank may end it with an error (it could not reach decode) */
    assert_true(mr_tracker_on_token(&f->t, 2, "c", -1, ERROR, "prefill: boom", 1.2));
    assert_string_equal(f->t.reqs[3].error, "prefill: boom");
    assert_int_equal(f->sched.decode[1].reserved_blocks, 0);
    assert_int_equal(f->sched.prefill[1].queued_tokens, 0);
}

static void test_lost_decode_rank_ends_its_requests(void **state)
{
    fixture *f = *state;
    submit(f, 0, 1, 3, 1.0);
    submit(f, 2, 2, 3, 1.0);
    submit(f, 3, 1, 4, 1.0);
    mr_tracker_on_token(&f->t, 3, "a", 5, NONE, "", 1.1);
    assert_int_equal(mr_tracker_rank_dead(&f->t, 3, true, false, 2.0), 2);
    assert_string_equal(f->t.reqs[0].error, "lost decode rank 3");
    assert_string_equal(f->t.reqs[2].error, "lost decode rank 3");
    assert_int_equal(f->t.reqs[0].n_out, 1); /* tokens so far are kept */
    assert_int_equal(f->t.reqs[3].phase, MR_RQ_RUNNING);
    assert_int_equal(f->sched.decode[0].reserved_blocks, 0);
    /* a second report of the same death ends nothing more */
    assert_int_equal(mr_tracker_rank_dead(&f->t, 3, true, false, 2.1), 0);
    assert_int_equal(f->t.n_failed, 3);
}

static void test_lost_prefill_rank_ends_only_requests_without_a_first_token(void **state)
{
    fixture *f = *state;
    submit(f, 0, 1, 3, 1.0);
    submit(f, 2, 1, 4, 1.0);
    submit(f, 3, 2, 4, 1.0);
    mr_tracker_on_token(&f->t, 3, "a", 5, NONE, "", 1.1); /* a is past prefill */
    assert_int_equal(mr_tracker_rank_dead(&f->t, 1, false, true, 2.0), 1);
    assert_int_equal(f->t.reqs[0].phase, MR_RQ_RUNNING);
    assert_string_equal(f->t.reqs[2].error, "lost prefill rank 1");
    assert_int_equal(f->t.reqs[3].phase, MR_RQ_RUNNING);
    assert_int_equal(f->sched.prefill[0].queued_tokens, 0);
    /* decode's own error report for b afterwards is a duplicate: ignored */
    assert_false(mr_tracker_on_token(&f->t, 4, "b", -1, ERROR, "prefill rank 1 lost", 2.1));
    assert_string_equal(f->t.reqs[2].error, "lost prefill rank 1");
}

static void test_timeouts_end_running_requests_only(void **state)
{
    fixture *f = *state;
    submit(f, 0, 1, 3, 1.0);
    submit(f, 2, 1, 3, 5.0);
    assert_int_equal(mr_tracker_check_timeouts(&f->t, 0, 1000.0), 0); /* disabled */
    assert_int_equal(mr_tracker_check_timeouts(&f->t, 10.0, 10.5), 0);
    assert_int_equal(mr_tracker_check_timeouts(&f->t, 10.0, 11.0), 1);
    assert_string_equal(f->t.reqs[0].error, "timed out after 10 s");
    assert_int_equal(f->t.reqs[2].phase, MR_RQ_RUNNING);
    assert_int_equal(f->t.reqs[3].phase, MR_RQ_PENDING); /* never submitted: no clock */
    assert_int_equal(mr_tracker_fail_all(&f->t, "no live decode rank", 12.0), 2);
    assert_true(mr_tracker_all_done(&f->t));
    assert_string_equal(f->t.reqs[3].error, "no live decode rank");
    assert_float_equal(mr_rq_e2e_ms(&f->t.reqs[3]), 0.0, 0);
    assert_int_equal(f->t.n_failed, 4);
    assert_int_equal(f->t.n_completed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_invalid_lines_end_at_once_with_their_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens_stream_in_order_and_timing_is_measured, setup, teardown),
        cmocka_unit_test_setup_teardown(test_single_token_has_zero_tpot_and_stop_ends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_from_other_ranks_are_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_decode_rank_ends_its_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_prefill_rank_ends_only_requests_without_a_first_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeouts_end_running_requests_only, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
