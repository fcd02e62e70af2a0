/*
 * What the collective suites share: the ways a case is called (blocking, or non-blocking and
 * completed by fx_wait or by polling fx_test), how a child records a failed call or wrong
 * elements, and how the parent checks that a run was clean.
 */
#ifndef FX_TEST_COLLCHECK_H
#define FX_TEST_COLLCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"
#include "harness.h"
#include "refdata.h"

#define NVARIANTS 4

enum mode { MODE_BLOCKING, MODE_WAIT, MODE_TEST };

extern const char *const mode_names[];

/* A variant of a case: in-place or not, how it completes. */
struct variant {
    int inplace;
    enum mode mode;
};

/* Variant v (0..3) of datatype dt: bit 0 in-place, bit 1 non-blocking; non-blocking calls of odd
 * datatypes complete by polling fx_test, the others by fx_wait. */
struct variant variant_of(int v, fx_datatype dt);

/* Completes a request that started with status `started` (req is read only after it): polling
 * fx_test (bounded in count and time) or fx_wait. */
fx_status complete(fx_status started, fx_request_t req, enum mode mode);

/* A seed for case (kind, k, v): the data differs between every two cases. */
uint64_t case_seed(int kind, const struct ref_case *k, int v);

/* Logs "coll dtype op count variant, nranks rank: what" into the child's log. */
void log_case(struct harness_child *c, const char *coll, const struct ref_case *k,
              struct variant var, const char *what);

/* Records a failed call; returns 1 so that callers stop (the communicator is broken). */
int record_error(struct harness_child *c, fx_comm_t comm, const char *coll,
                 const struct ref_case *k, struct variant var, fx_status status);

/* Adds `wrong` wrong elements (the first described by `first`) to the child's count and log. */
void record_wrong(struct harness_child *c, const char *coll, const struct ref_case *k,
                  struct variant var, size_t wrong, const char *first);

/* Every rank initialised, returned FX_OK from every call, saw no wrong element and exited 0. */
void expect_clean(const struct harness_run_info *info, const char *what);

/* Runs fn on nranks ranks with a deadline, expects a clean run and prints how long it took.
 * Returns the run's elapsed milliseconds; free info with harness_free. */
double run_clean(int nranks, harness_rank_fn fn, int deadline_ms, const char *what,
                 struct harness_run_info *info);

#endif /* FX_TEST_COLLCHECK_H */
