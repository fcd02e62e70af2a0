/* Collective and algorithm names, FX_ALGO parsing and the algorithm choice (coll_tune.h). */
#include "coll_tune.h"

#include <stdio.h>
#include <string.h>

static const char *const coll_names[FX_COLL_END] = {
    [FX_COLL_ALLREDUCE] = "allreduce", [FX_COLL_ALLGATHER] = "allgather",
    [FX_COLL_SENDRECV] = "send/recv",  [FX_COLL_REDUCESCATTER] = "reducescatter",
    [FX_COLL_BROADCAST] = "broadcast", [FX_COLL_REDUCE] = "reduce",
    [FX_COLL_BARRIER] = "barrier",     [FX_COLL_ALLTOALL] = "alltoall",
};

static const char *const algo_names[FX_ALGO_END] = {
    [FX_ALGO_AUTO]          = "auto",
    [FX_ALGO_RING]          = "ring",
    [FX_ALGO_PAIR]          = "pair",
    [FX_ALGO_TREE]          = "tree",
    [FX_ALGO_RD]            = "rd",
    [FX_ALGO_RABENSEIFNER]  = "rabenseifner",
    [FX_ALGO_BRUCK]         = "bruck",
    [FX_ALGO_CHAIN]         = "chain",
    [FX_ALGO_BINOMIAL]      = "binomial",
    [FX_ALGO_PAIRWISE]      = "pairwise",
    [FX_ALGO_DISSEMINATION] = "dissemination",
    [FX_ALGO_P2P]           = "p2p",
};

/* The algorithms each collective runs in this build, as a bit set over enum fx_algo. */
#define BIT(a) (1u << (a))
static const unsigned coll_algos[FX_COLL_END] = {
    [FX_COLL_ALLREDUCE] = BIT(FX_ALGO_RING) | BIT(FX_ALGO_PAIR),
    [FX_COLL_ALLGATHER] = BIT(FX_ALGO_RING),
    [FX_COLL_SENDRECV]  = BIT(FX_ALGO_P2P),
};

const char *fx_coll_name(int coll)
{
    if (coll <= 0 || coll >= FX_COLL_END || coll_names[coll] == NULL) {
        return "unknown collective";
    }
    return coll_names[coll];
}

const char *fx_coll_algo_name(int algo)
{
    if (algo < 0 || algo >= FX_ALGO_END) {
        return "unknown";
    }
    return algo_names[algo];
}

bool fx_coll_algo_valid(int coll, int algo)
{
    if (coll <= 0 || coll >= FX_COLL_END || algo <= 0 || algo >= FX_ALGO_END) {
        return false;
    }
    return (coll_algos[coll] & BIT(algo)) != 0;
}

/* The enum value whose name is s[0..len), or -1. */
static int lookup(const char *const *names, int n, const char *s, size_t len)
{
    for (int i = 0; i < n; i++) {
        if (names[i] != NULL && strlen(names[i]) == len && strncmp(names[i], s, len) == 0) {
            return i;
        }
    }
    return -1;
}

/* "ring, pair" for coll's algorithms. */
static void list_algos(int coll, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (int a = 1; a < FX_ALGO_END && used < len; a++) {
        if (fx_coll_algo_valid(coll, a)) {
            used +=
                (size_t)snprintf(buf + used, len - used, "%s%s", used ? ", " : "", algo_names[a]);
        }
    }
}

fx_status fx_coll_algo_parse(const char *spec, uint64_t *forced, char *err, size_t errlen)
{
    const char *p = spec != NULL && *spec != '\0' ? spec : NULL;

    *forced = 0;
    while (p != NULL) {
        const char *end   = strchr(p, ',');
        size_t len        = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        int coll;
        int algo;
        char choices[128];

        if (colon == NULL) {
            snprintf(err, errlen, "FX_ALGO item '%.*s' is not collective:algorithm", (int)len, p);
            return FX_ERR_INVALID_ARG;
        }
        coll = lookup(coll_names, FX_COLL_END, p, (size_t)(colon - p));
        if (coll < 0 || coll == FX_COLL_SENDRECV) {
            snprintf(err, errlen,
                     "FX_ALGO: unknown collective '%.*s' (allreduce, allgather, reducescatter, "
                     "broadcast, reduce, barrier, alltoall)",
                     (int)(colon - p), p);
            return FX_ERR_INVALID_ARG;
        }
        algo = lookup(algo_names, FX_ALGO_END, colon + 1, len - (size_t)(colon - p) - 1);
        list_algos(coll, choices, sizeof(choices));
        if (algo < 0 || (algo != FX_ALGO_AUTO && !fx_coll_algo_valid(coll, algo))) {
            snprintf(err, errlen, "FX_ALGO: %s has no algorithm '%.*s' (auto, %s)",
                     coll_names[coll], (int)(len - (size_t)(colon - p) - 1), colon + 1, choices);
            return FX_ERR_INVALID_ARG;
        }
        if ((*forced >> (8 * coll)) & 0x80u) {
            snprintf(err, errlen, "FX_ALGO names %s twice", coll_names[coll]);
            return FX_ERR_INVALID_ARG;
        }
        /* The high bit marks "named" so that "x:auto" twice is caught too; it is masked off. */
        *forced |= (uint64_t)(0x80u | (unsigned)algo) << (8 * coll);
        p = end != NULL ? end + 1 : NULL;
    }
    for (int c = 0; c < FX_COLL_END; c++) {
        *forced &= ~((uint64_t)0x80u << (8 * c));
    }
    return FX_OK;
}

int fx_coll_algo_forced(uint64_t forced, int coll)
{
    if (coll <= 0 || coll >= FX_COLL_END) {
        return FX_ALGO_AUTO;
    }
    return (int)((forced >> (8 * coll)) & 0x7fu);
}

/* ------------------------------------------------------------------ choice */

#define PAIR_MAX_BYTES (512u << 10) /* two ranks: one exchange up to this size */

/* Whether `algo` can run this case with the executor's scratch. */
static bool can_run(const struct fx_tune_case *c, int algo)
{
    switch (algo) {
    case FX_ALGO_PAIR:
        /* Whole buffer in one slot (two in place: the input is kept in slot 0). */
        return c->nranks == 2 && c->bytes <= c->slot_bytes && (!c->in_place || c->nslots >= 2);
    default:
        return fx_coll_algo_valid(c->coll, algo);
    }
}

static int choose_auto(const struct fx_tune_case *c)
{
    switch (c->coll) {
    case FX_COLL_ALLREDUCE:
        if (c->bytes <= PAIR_MAX_BYTES && can_run(c, FX_ALGO_PAIR)) {
            return FX_ALGO_PAIR;
        }
        return FX_ALGO_RING;
    case FX_COLL_SENDRECV:
        return FX_ALGO_P2P;
    default:
        return FX_ALGO_RING;
    }
}

int fx_coll_choose(const struct fx_tune_case *c, const char **why)
{
    int forced = fx_coll_algo_forced(c->forced, c->coll);
    const char *unused;

    if (why == NULL) {
        why = &unused;
    }
    if (forced != FX_ALGO_AUTO && can_run(c, forced)) {
        *why = "forced by FX_ALGO";
        return forced;
    }
    *why = forced != FX_ALGO_AUTO ? "FX_ALGO's choice cannot run this case; tuner's choice"
                                  : "tuner's choice";
    return choose_auto(c);
}
