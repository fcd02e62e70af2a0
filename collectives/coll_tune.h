/*
 * Collective kinds, algorithms and the choice between them. Pure code: the executor asks
 * fx_coll_choose which plan builder to run for an operation, and every rank must get the same
 * answer, so the inputs are only values every rank shares (the collective's arguments, the
 * rank count, the job-wide configuration rank 0 distributed).
 *
 * FX_ALGO forces a choice per collective: "allreduce:tree,allgather:ring". It is parsed on
 * rank 0 into one byte per collective kind (fx_coll_algo_parse) and sent to every rank with the
 * rank table, so a job never mixes algorithms because one rank's environment differed.
 */
#ifndef FX_COLL_TUNE_H
#define FX_COLL_TUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coll_cost.h"
#include "fabricx.h"

/* The collective kinds, as the wire header carries them. */
enum fx_coll {
    FX_COLL_ALLREDUCE     = 1,
    FX_COLL_ALLGATHER     = 2,
    FX_COLL_SENDRECV      = 3, /* point-to-point: fx_send, fx_recv, fx_sendrecv */
    FX_COLL_REDUCESCATTER = 4,
    FX_COLL_BROADCAST     = 5,
    FX_COLL_REDUCE        = 6,
    FX_COLL_BARRIER       = 7,
    FX_COLL_ALLTOALL      = 8,
    FX_COLL_END           = 9 /* one past the last kind; at most 9, FX_ALGO keeps a byte per kind
                                   in 64 bits */
};

/* Algorithms; FX_ALGO_AUTO lets the tuner choose. */
enum fx_algo {
    FX_ALGO_AUTO = 0,
    FX_ALGO_RING,          /* all-reduce, all-gather, reduce-scatter */
    FX_ALGO_PAIR,          /* all-reduce on two ranks: one exchange */
    FX_ALGO_TREE,          /* all-reduce: double binary tree */
    FX_ALGO_RD,            /* all-reduce, all-gather: recursive doubling */
    FX_ALGO_RABENSEIFNER,  /* all-reduce: recursive halving, then doubling */
    FX_ALGO_BRUCK,         /* all-gather */
    FX_ALGO_CHAIN,         /* broadcast, reduce: a pipelined chain */
    FX_ALGO_BINOMIAL,      /* broadcast, reduce: a binomial tree */
    FX_ALGO_PAIRWISE,      /* all-to-all: pairwise exchange */
    FX_ALGO_DISSEMINATION, /* barrier */
    FX_ALGO_P2P,           /* send/recv */
    FX_ALGO_END
};

/* "allreduce", "reducescatter", ...; "unknown collective" for anything else. */
const char *fx_coll_name(int coll);
/* "ring", "tree", ...; "auto" for FX_ALGO_AUTO; "unknown" for anything else. */
const char *fx_coll_algo_name(int algo);
/* Whether this build runs `algo` for collective `coll`. */
bool fx_coll_algo_valid(int coll, int algo);

/*
 * Parses an FX_ALGO value: comma-separated "collective:algorithm" pairs (empty or NULL: no
 * forcing). *forced gets one byte per collective kind (byte `coll - 1` holds its enum fx_algo, 0
 * for auto). FX_ERR_INVALID_ARG with err naming the bad item and the valid choices: an unknown
 * collective or algorithm, an algorithm the collective does not run, a collective named twice.
 */
fx_status fx_coll_algo_parse(const char *spec, uint64_t *forced, char *err, size_t errlen);
/* The algorithm `forced` holds for coll, FX_ALGO_AUTO when none. */
int fx_coll_algo_forced(uint64_t forced, int coll);

/* One operation, as the tuner sees it. */
struct fx_tune_case {
    int coll; /* enum fx_coll */
    int nranks;
    size_t count; /* the call's count: all-gather's send count, reduce-scatter's result
                     count, all-to-all's count per peer; elements of elem_size bytes */
    size_t elem_size;
    uint32_t nslots;                     /* scratch slots the executor has */
    size_t slot_bytes;                   /* bytes per scratch slot: the largest chunk */
    size_t chunk_bytes;                  /* FX_CHUNK_BYTES; 0: the tuner chooses */
    uint64_t forced;                     /* FX_ALGO, as fx_coll_algo_parse gives it */
    const struct fx_cost_params *params; /* the measured cost model; NULL: rule of thumb */
    bool spans_hosts;                    /* ranks on more than one host: some links cross the
                                            network, each host's flows sharing its port */
};

struct fx_tune_choice {
    int algo;           /* enum fx_algo */
    size_t chunk_bytes; /* pipeline chunk, at most the case's slot_bytes */
    double predicted_s; /* the model's time for it; 0 without parameters */
    const char *why;    /* static: "forced by FX_ALGO", "cost model", ... */
};

/*
 * How far apart two predictions must be for the model to tell them apart: 10% (the measured
 * parameters and the model's fit vary by more than that between runs, docs/collectives.md).
 */
#define FX_COLL_TUNE_RESOLUTION 0.10

/*
 * Whether every step of `algo` uses the same peers (ring, pair, tree, chain), so that the same
 * connections carry the whole operation; the others change partner between steps.
 */
bool fx_coll_algo_fixed_peers(int algo);

/*
 * The algorithm and chunk for an operation: the forced algorithm when FX_ALGO names one that
 * can run this case, else the one the cost model predicts fastest among those that can (ties
 * to the lower enum value). Across hosts (spans_hosts), when the fastest changes partner
 * between steps, its bandwidth term (bytes sent x beta) is half its time or more, and an
 * algorithm with fixed peers is predicted within FX_COLL_TUNE_RESOLUTION of it, the fastest of
 * those is taken instead: the model cannot tell them apart, and a step that opens a long flow
 * to a new partner pays what the model does not see (losses where that flow and the previous
 * step's meet at a host's port; docs/collectives.md). The same inputs give the same answer on
 * every rank.
 */
void fx_coll_choose(const struct fx_tune_case *c, struct fx_tune_choice *out);

/*
 * Whether `algo` can run this case with the executor's scratch (the plan builders' own
 * limits: the exchange holds the whole buffer in one or two slots, recursive doubling keeps
 * every intermediate value, recursive-doubling all-gather needs a power of two).
 */
bool fx_coll_can_run(const struct fx_tune_case *c, int algo);

/* The model's cost of `algo` for this case with chunk_bytes (0: the chunk the tuner would give
 * it); FX_ERR_UNSUPPORTED where the model has no formula (point-to-point), there are no
 * parameters, or the algorithm does not apply. */
fx_status fx_coll_predict(const struct fx_tune_case *c, int algo, size_t chunk_bytes,
                          struct fx_cost *out);

#endif /* FX_COLL_TUNE_H */
