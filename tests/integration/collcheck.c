/* What the collective suites share (collcheck.h). */
#include "collcheck.h"

#include <criterion/criterion.h>
#include <sched.h>
#include <stdio.h>

#define POLL_LIMIT_MS    60000
#define POLL_LIMIT_COUNT 100000000L

const char *const mode_names[] = {"blocking", "non-blocking (fx_wait)",
                                  "non-blocking (fx_test polling)"};

struct variant variant_of(int v, fx_datatype dt)
{
    struct variant var = {.inplace = v & 1, .mode = MODE_BLOCKING};

    if (v & 2) {
        var.mode = (dt & 1) ? MODE_TEST : MODE_WAIT;
    }
    return var;
}

/* Polls fx_test until the request completes, bounded in count and time. */
static fx_status poll_request(fx_request_t req)
{
    double end = harness_now_ms() + POLL_LIMIT_MS;
    fx_status status;

    for (long n = 0; n < POLL_LIMIT_COUNT; n++) {
        status = fx_test(req);
        if (status != FX_INPROGRESS || harness_now_ms() > end) {
            return status;
        }
        sched_yield();
    }
    return FX_INPROGRESS;
}

fx_status complete(fx_status started, fx_request_t req, enum mode mode)
{
    if (started != FX_OK) {
        return started;
    }
    return mode == MODE_TEST ? poll_request(req) : fx_wait(req, -1);
}

uint64_t case_seed(int kind, const struct ref_case *k, int v)
{
    return ref_mix((uint64_t)kind << 56 ^ (uint64_t)k->nranks << 48 ^ (uint64_t)k->dt << 40 ^
                   (uint64_t)k->op << 32 ^ (uint64_t)k->count << 4 ^ (uint64_t)v);
}

void log_case(struct harness_child *c, const char *coll, const struct ref_case *k,
              struct variant var, const char *what)
{
    harness_logf(c, "%s %s %s count %zu %s %s, nranks %d rank %d: %s", coll, ref_dt_name(k->dt),
                 k->op < FX_NUM_OPS ? ref_op_name(k->op) : "-", k->count,
                 var.inplace ? "in-place" : "out-of-place", mode_names[var.mode], k->nranks,
                 c->index, what);
}

int record_error(struct harness_child *c, fx_comm_t comm, const char *coll,
                 const struct ref_case *k, struct variant var, fx_status status)
{
    harness_set_status(c, comm, status);
    log_case(c, coll, k, var, fx_strerror(status));
    return 1;
}

void record_wrong(struct harness_child *c, const char *coll, const struct ref_case *k,
                  struct variant var, size_t wrong, const char *first)
{
    char what[256];

    snprintf(what, sizeof(what), "%zu wrong elements, %s", wrong, first);
    c->res->wrong += (long long)wrong;
    log_case(c, coll, k, var, what);
}

void expect_clean(const struct harness_run_info *info, const char *what)
{
    cr_expect(!info->deadline_hit, "%s: the run hit its deadline after %.0f ms", what,
              info->elapsed_ms);
    for (int i = 0; i < info->nprocs; i++) {
        const struct harness_result *res = &info->shared->res[i];

        cr_expect_eq(res->init_status, FX_OK, "%s rank %d: init returned %d (%s): %s", what, i,
                     res->init_status, fx_strerror(res->init_status), res->err);
        cr_expect_eq(res->status, FX_OK, "%s rank %d: status %d (%s): %s\n%s", what, i, res->status,
                     fx_strerror(res->status), res->err, res->log);
        cr_expect_eq(res->wrong, 0, "%s rank %d: %lld wrong elements\n%s", what, i, res->wrong,
                     res->log);
        cr_expect(res->exit_code == 0 && res->term_signal == 0,
                  "%s rank %d: exit code %d, signal %d%s", what, i, res->exit_code,
                  res->term_signal, res->killed ? " (killed by the harness)" : "");
    }
}

double run_clean(int nranks, harness_rank_fn fn, int deadline_ms, const char *what,
                 struct harness_run_info *info)
{
    struct harness_opts opts = {
        .nranks = nranks, .deadline_ms = deadline_ms, .sync_destroy = 1, .rank_fn = fn};

    cr_assert_eq(harness_run(&opts, info), 0, "%s: harness could not start: %s", what,
                 fx_last_error());
    expect_clean(info, what);
    fprintf(stderr, "%s: %.0f ms, %lld operations per rank, rank 0 spent %lld ms in them\n", what,
            info->elapsed_ms, info->shared->res[0].ops, info->shared->res[0].aux);
    return info->elapsed_ms;
}
