/*
 * Slow-link analysis: from the throughput measured on directed links between hosts, names what
 * is slow with robust statistics, never with a fixed rate. Used by the running library (rank 0,
 * over the links its ranks report: docs/linkstats.md) and by fx-doctor (over every pair of
 * hosts). Pure: no I/O, no clock.
 *
 * The expected rate is the median of the upper half of the measured rates (a cluster is mostly
 * healthy: up to half of the links may be slow without moving it, which a plain median could not
 * bear when one host of four is slow and touches half the pairs); the spread is the median
 * absolute deviation of that upper half, scaled to a standard deviation (x 1.4826). A link is
 * slow when it falls below the expected rate by more than max(min_drop x expected, mad_k x
 * spread). A host is slow when at least 3/4 of its links, and at least two, are slow (every
 * path through its NIC, port or cable); a slow link between two hosts that are not slow is a
 * slow path. With fewer than three hosts or three links nothing can be told apart: no finding.
 */
#ifndef FX_SLOW_H
#define FX_SLOW_H

#include <stddef.h>

/* One directed, measured link. */
struct fx_slow_link {
    int src;     /* host index, 0 .. nhosts - 1 */
    int dst;     /* host index, != src */
    double rate; /* bytes per second; <= 0 or NaN: not measured, ignored */
};

enum fx_slow_kind {
    FX_SLOW_HOST = 1, /* every path through `host` is slow */
    FX_SLOW_PATH = 2, /* the path between hosts a and b is slow, both hosts fine elsewhere */
};

struct fx_slow_finding {
    enum fx_slow_kind kind;
    int host;        /* FX_SLOW_HOST */
    int a, b;        /* FX_SLOW_PATH: a < b */
    unsigned dirs;   /* FX_SLOW_PATH: bit 0 a->b slow, bit 1 b->a slow */
    double measured; /* median rate of the finding's slow links */
    int nslow;       /* slow links of the host or path */
    int nlinks;      /* measured links of the host or path */
};

struct fx_slow_params {
    double min_drop; /* fraction below expected that is never slow; default 0.25 */
    double mad_k;    /* scaled MADs below expected that are never slow; default 4 */
};

struct fx_slow_result {
    double expected;  /* bytes per second */
    double spread;    /* scaled MAD of the upper half */
    double threshold; /* links below this rate are slow */
    double median;    /* plain median of every measured link */
    int nlinks;       /* measured links */
    int nhosts;       /* hosts with at least one measured link */
};

#define FX_SLOW_PARAMS_DEFAULT                                                                     \
    {                                                                                              \
        0.25, 4.0                                                                                  \
    }

/*
 * Analyses nlinks links between nhosts hosts. Writes at most max findings to out (hosts first,
 * slowest first, then paths, slowest first) and the statistics to *res (res may be NULL).
 * Returns the number of findings (which may exceed max), or -1 when memory runs out or an
 * argument is invalid (a host index out of range, src == dst).
 */
int fx_slow_analyze(const struct fx_slow_link *links, size_t nlinks, int nhosts,
                    const struct fx_slow_params *params, struct fx_slow_finding *out, int max,
                    struct fx_slow_result *res);

/* Median of n values (sorted in place). 0 for n == 0. */
double fx_slow_median(double *v, size_t n);

#endif /* FX_SLOW_H */
