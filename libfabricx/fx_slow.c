/* Slow-link analysis (fx_slow.h): robust reference rate, slow links, slow hosts, slow paths. */
#include "fx_slow.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAD_SCALE 1.4826 /* MAD of a normal distribution -> its standard deviation */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;

    return (x > y) - (x < y);
}

double fx_slow_median(double *v, size_t n)
{
    if (n == 0) {
        return 0;
    }
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int cmp_finding(const void *a, const void *b)
{
    const struct fx_slow_finding *x = a;
    const struct fx_slow_finding *y = b;

    if (x->kind != y->kind) {
        return x->kind == FX_SLOW_HOST ? -1 : 1;
    }
    return (x->measured > y->measured) - (x->measured < y->measured);
}

/* The reference rate and its threshold, from the valid rates (reordered). */
static void reference(double *rates, size_t n, double *tmp, const struct fx_slow_params *p,
                      struct fx_slow_result *res)
{
    size_t nup = 0;

    res->median = fx_slow_median(rates, n); /* sorts rates */
    for (size_t i = 0; i < n; i++) {
        if (rates[i] >= res->median) {
            rates[nup++] = rates[i];
        }
    }
    res->expected = fx_slow_median(rates, nup);
    for (size_t i = 0; i < nup; i++) {
        tmp[i] = fabs(rates[i] - res->expected);
    }
    res->spread    = MAD_SCALE * fx_slow_median(tmp, nup);
    res->threshold = res->expected - fmax(p->min_drop * res->expected, p->mad_k * res->spread);
}

struct host_count {
    int nlinks;
    int nslow;
    bool slow;
};

/* Adds the finding of every slow host; returns the count written to out (up to max). */
static int host_findings(const struct fx_slow_link *links, size_t nlinks, const bool *valid,
                         const bool *slow, int nhosts, struct host_count *hc, double *tmp,
                         struct fx_slow_finding *out, int max, int *total)
{
    int n = 0;

    for (size_t i = 0; i < nlinks; i++) {
        if (!valid[i]) {
            continue;
        }
        hc[links[i].src].nlinks++;
        hc[links[i].dst].nlinks++;
        hc[links[i].src].nslow += slow[i];
        hc[links[i].dst].nslow += slow[i];
    }
    for (int h = 0; h < nhosts; h++) {
        size_t k = 0;

        hc[h].slow = hc[h].nslow >= 2 && 4 * hc[h].nslow >= 3 * hc[h].nlinks;
        if (!hc[h].slow) {
            continue;
        }
        for (size_t i = 0; i < nlinks; i++) {
            if (valid[i] && slow[i] && (links[i].src == h || links[i].dst == h)) {
                tmp[k++] = links[i].rate;
            }
        }
        if (n < max) {
            out[n++] = (struct fx_slow_finding){.kind     = FX_SLOW_HOST,
                                                .host     = h,
                                                .a        = -1,
                                                .b        = -1,
                                                .measured = fx_slow_median(tmp, k),
                                                .nslow    = hc[h].nslow,
                                                .nlinks   = hc[h].nlinks};
        }
        (*total)++;
    }
    return n;
}

/* Adds one finding per pair of fine hosts joined by a slow link. */
static int path_findings(const struct fx_slow_link *links, size_t nlinks, const bool *valid,
                         const bool *slow, const struct host_count *hc, bool *seen, double *tmp,
                         struct fx_slow_finding *out, int n, int max, int *total)
{
    memset(seen, 0, nlinks * sizeof(*seen));
    for (size_t i = 0; i < nlinks; i++) {
        int a                    = links[i].src < links[i].dst ? links[i].src : links[i].dst;
        int b                    = links[i].src < links[i].dst ? links[i].dst : links[i].src;
        struct fx_slow_finding f = {.kind = FX_SLOW_PATH, .host = -1, .a = a, .b = b};
        size_t k                 = 0;

        if (!valid[i] || !slow[i] || seen[i] || hc[a].slow || hc[b].slow) {
            continue;
        }
        for (size_t j = i; j < nlinks; j++) {
            bool same = (links[j].src == a && links[j].dst == b) ||
                        (links[j].src == b && links[j].dst == a);

            if (!valid[j] || !same) {
                continue;
            }
            seen[j] = true;
            f.nlinks++;
            if (slow[j]) {
                f.nslow++;
                f.dirs |= links[j].src == a ? 1u : 2u;
                tmp[k++] = links[j].rate;
            }
        }
        for (size_t j = 0; j < i; j++) { /* fine links of the pair seen before i */
            if (valid[j] && !slow[j] &&
                ((links[j].src == a && links[j].dst == b) ||
                 (links[j].src == b && links[j].dst == a))) {
                f.nlinks++;
            }
        }
        f.measured = fx_slow_median(tmp, k);
        if (n < max) {
            out[n++] = f;
        }
        (*total)++;
    }
    return n;
}

int fx_slow_analyze(const struct fx_slow_link *links, size_t nlinks, int nhosts,
                    const struct fx_slow_params *params, struct fx_slow_finding *out, int max,
                    struct fx_slow_result *res)
{
    const struct fx_slow_params defaults = FX_SLOW_PARAMS_DEFAULT;
    struct fx_slow_result local          = {0};
    size_t nvalid                        = 0;
    int total                            = 0;
    int written                          = 0;
    double *rates                        = NULL;
    double *tmp                          = NULL;
    bool *valid                          = NULL;
    bool *slow                           = NULL;
    bool *seen                           = NULL;
    struct host_count *hc                = NULL;

    if (res == NULL) {
        res = &local;
    }
    memset(res, 0, sizeof(*res));
    if (params == NULL) {
        params = &defaults;
    }
    if (nhosts < 0 || (links == NULL && nlinks > 0) || max < 0 || (out == NULL && max > 0)) {
        return -1;
    }
    for (size_t i = 0; i < nlinks; i++) {
        if (links[i].src < 0 || links[i].src >= nhosts || links[i].dst < 0 ||
            links[i].dst >= nhosts || links[i].src == links[i].dst) {
            return -1;
        }
    }
    rates = malloc((nlinks + 1) * sizeof(*rates));
    tmp   = malloc((nlinks + 1) * sizeof(*tmp));
    valid = calloc(nlinks + 1, sizeof(*valid));
    slow  = calloc(nlinks + 1, sizeof(*slow));
    seen  = calloc(nlinks + 1, sizeof(*seen));
    hc    = calloc((size_t)nhosts + 1, sizeof(*hc));
    if (rates == NULL || tmp == NULL || valid == NULL || slow == NULL || seen == NULL ||
        hc == NULL) {
        total = -1;
        goto out;
    }
    for (size_t i = 0; i < nlinks; i++) {
        valid[i] = isfinite(links[i].rate) && links[i].rate > 0;
        if (valid[i]) {
            rates[nvalid++] = links[i].rate;
            if (hc[links[i].src].nlinks++ == 0) {
                res->nhosts++;
            }
            if (hc[links[i].dst].nlinks++ == 0) {
                res->nhosts++;
            }
        }
    }
    memset(hc, 0, (size_t)nhosts * sizeof(*hc));
    res->nlinks = (int)nvalid;
    if (nvalid == 0) {
        goto out;
    }
    reference(rates, nvalid, tmp, params, res);
    if (nvalid < 3 || res->nhosts < 3) {
        goto out;
    }
    for (size_t i = 0; i < nlinks; i++) {
        slow[i] = valid[i] && links[i].rate < res->threshold;
    }
    written = host_findings(links, nlinks, valid, slow, nhosts, hc, tmp, out, max, &total);
    written = path_findings(links, nlinks, valid, slow, hc, seen, tmp, out, written, max, &total);
    qsort(out, (size_t)written, sizeof(*out), cmp_finding);
out:
    free(rates);
    free(tmp);
    free(valid);
    free(slow);
    free(seen);
    free(hc);
    return total;
}
