/* Collective and algorithm names, FX_ALGO parsing and the algorithm choice (coll_tune.h). */
#include "coll_tune.h"

#include "coll_build_inl.h"

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

_Static_assert(FX_COLL_END - 1 <= 8, "FX_ALGO keeps one byte per collective kind in 64 bits");

/* The algorithms each collective runs in this build, as a bit set over enum fx_algo. */
#define BIT(a) (1u << (a))
static const unsigned coll_algos[FX_COLL_END] = {
    [FX_COLL_ALLREDUCE] = BIT(FX_ALGO_RING) | BIT(FX_ALGO_PAIR) | BIT(FX_ALGO_TREE) |
                          BIT(FX_ALGO_RD) | BIT(FX_ALGO_RABENSEIFNER),
    [FX_COLL_ALLGATHER]     = BIT(FX_ALGO_RING) | BIT(FX_ALGO_RD) | BIT(FX_ALGO_BRUCK),
    [FX_COLL_REDUCESCATTER] = BIT(FX_ALGO_RING),
    [FX_COLL_BROADCAST]     = BIT(FX_ALGO_CHAIN) | BIT(FX_ALGO_BINOMIAL),
    [FX_COLL_REDUCE]        = BIT(FX_ALGO_CHAIN) | BIT(FX_ALGO_BINOMIAL),
    [FX_COLL_BARRIER]       = BIT(FX_ALGO_DISSEMINATION),
    [FX_COLL_ALLTOALL]      = BIT(FX_ALGO_PAIRWISE),
    [FX_COLL_SENDRECV]      = BIT(FX_ALGO_P2P),
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
        if ((*forced >> (8 * (coll - 1))) & 0x80u) {
            snprintf(err, errlen, "FX_ALGO names %s twice", coll_names[coll]);
            return FX_ERR_INVALID_ARG;
        }
        /* The high bit marks "named" so that "x:auto" twice is caught too; it is masked off. */
        *forced |= (uint64_t)(0x80u | (unsigned)algo) << (8 * (coll - 1));
        p = end != NULL ? end + 1 : NULL;
    }
    for (int c = 1; c < FX_COLL_END; c++) {
        *forced &= ~((uint64_t)0x80u << (8 * (c - 1)));
    }
    return FX_OK;
}

int fx_coll_algo_forced(uint64_t forced, int coll)
{
    if (coll <= 0 || coll >= FX_COLL_END) {
        return FX_ALGO_AUTO;
    }
    return (int)((forced >> (8 * (coll - 1))) & 0x7fu);
}

/* ------------------------------------------------------------------ choice */

#define CHUNK_MIN (64u << 10)
#define CHUNK_MAX (512u << 10)

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

static bool is_pow2(int n)
{
    return n > 0 && (n & (n - 1)) == 0;
}

static int floor_log2(int n)
{
    int k = 0;

    while ((2 << k) <= n) {
        k++;
    }
    return k;
}

/* The chunk a ring gets: a quarter of a segment, within [64 KiB, 512 KiB] and the slots; the
 * pipelined tree and chain want more chunks in flight: an eighth of the buffer. */
static size_t default_chunk(const struct fx_tune_case *c, int algo)
{
    size_t bytes = c->count * c->elem_size;
    size_t chunk;

    if (c->chunk_bytes != 0) {
        return min_size(c->chunk_bytes, c->slot_bytes);
    }
    if (c->coll == FX_COLL_ALLGATHER || c->coll == FX_COLL_REDUCESCATTER ||
        c->coll == FX_COLL_ALLTOALL) {
        bytes *= (size_t)c->nranks;
    }
    chunk =
        algo == FX_ALGO_TREE || algo == FX_ALGO_CHAIN ? bytes / 8 : bytes / (size_t)c->nranks / 4;
    chunk = chunk < CHUNK_MIN ? CHUNK_MIN : min_size(chunk, CHUNK_MAX);
    return min_size(chunk, c->slot_bytes);
}

bool fx_coll_can_run(const struct fx_tune_case *c, int algo)
{
    size_t bytes = c->count * c->elem_size;

    if (!fx_coll_algo_valid(c->coll, algo)) {
        return false;
    }
    switch (algo) {
    case FX_ALGO_PAIR:
        /* Whole buffer in one slot, two in place (the input is kept in slot 0). Two slots are
         * asked whether or not this rank is in place: another rank may not be, and all must
         * choose alike. */
        return c->nranks == 2 && bytes <= c->slot_bytes && c->nslots >= 2;
    case FX_ALGO_RING:
        /* Reduce-scatter keeps a partial sum in a slot while the next chunk arrives. */
        return c->coll != FX_COLL_REDUCESCATTER || c->nranks <= 2 || c->nslots >= 2;
    case FX_ALGO_BINOMIAL:
        return c->coll != FX_COLL_REDUCE || c->nranks <= 2 || c->nslots >= 2;
    case FX_ALGO_RD:
        if (c->coll == FX_COLL_ALLGATHER) {
            return is_pow2(c->nranks);
        }
        if (c->nranks >= 2 && c->count > 0) {
            size_t per    = fx_build_chunk_elems(default_chunk(c, algo), c->elem_size);
            size_t chunks = (c->count + per - 1) / per;

            return chunks <= c->nslots / (uint32_t)(floor_log2(c->nranks) + 1);
        }
        return true;
    default:
        return true;
    }
}

typedef fx_status (*cost_fn)(const struct fx_cost_params *p, int nranks, size_t count,
                             size_t elem_size, size_t chunk_bytes, struct fx_cost *out);

static cost_fn cost_of(int coll, int algo)
{
    switch (coll * FX_ALGO_END + algo) {
    case FX_COLL_ALLREDUCE *FX_ALGO_END + FX_ALGO_RING:
        return fx_cost_ring_allreduce;
    case FX_COLL_ALLREDUCE *FX_ALGO_END + FX_ALGO_PAIR:
        return fx_cost_pair_allreduce;
    case FX_COLL_ALLREDUCE *FX_ALGO_END + FX_ALGO_TREE:
        return fx_cost_tree_allreduce;
    case FX_COLL_ALLREDUCE *FX_ALGO_END + FX_ALGO_RD:
        return fx_cost_rd_allreduce;
    case FX_COLL_ALLREDUCE *FX_ALGO_END + FX_ALGO_RABENSEIFNER:
        return fx_cost_rabenseifner_allreduce;
    case FX_COLL_ALLGATHER *FX_ALGO_END + FX_ALGO_RING:
        return fx_cost_ring_allgather;
    case FX_COLL_ALLGATHER *FX_ALGO_END + FX_ALGO_RD:
        return fx_cost_rd_allgather;
    case FX_COLL_ALLGATHER *FX_ALGO_END + FX_ALGO_BRUCK:
        return fx_cost_bruck_allgather;
    case FX_COLL_REDUCESCATTER *FX_ALGO_END + FX_ALGO_RING:
        return fx_cost_ring_reduce_scatter;
    case FX_COLL_BROADCAST *FX_ALGO_END + FX_ALGO_CHAIN:
        return fx_cost_chain_broadcast;
    case FX_COLL_BROADCAST *FX_ALGO_END + FX_ALGO_BINOMIAL:
        return fx_cost_binomial_broadcast;
    case FX_COLL_REDUCE *FX_ALGO_END + FX_ALGO_CHAIN:
        return fx_cost_chain_reduce;
    case FX_COLL_REDUCE *FX_ALGO_END + FX_ALGO_BINOMIAL:
        return fx_cost_binomial_reduce;
    case FX_COLL_ALLTOALL *FX_ALGO_END + FX_ALGO_PAIRWISE:
        return fx_cost_pairwise_alltoall;
    case FX_COLL_BARRIER *FX_ALGO_END + FX_ALGO_DISSEMINATION:
        return fx_cost_dissemination_barrier;
    default:
        return NULL;
    }
}

fx_status fx_coll_predict(const struct fx_tune_case *c, int algo, size_t chunk_bytes,
                          struct fx_cost *out)
{
    cost_fn fn = cost_of(c->coll, algo);

    if (fn == NULL || c->params == NULL) {
        return FX_ERR_UNSUPPORTED;
    }
    if (chunk_bytes == 0) {
        chunk_bytes = default_chunk(c, algo);
    }
    return fn(c->params, c->nranks, c->count, c->elem_size, chunk_bytes, out);
}

/* Without a model: the exchange for two ranks up to 512 KiB, else the collective's first
 * algorithm. */
static int rule_of_thumb(const struct fx_tune_case *c)
{
    if (c->coll == FX_COLL_ALLREDUCE && c->count * c->elem_size <= CHUNK_MAX &&
        fx_coll_can_run(c, FX_ALGO_PAIR)) {
        return FX_ALGO_PAIR;
    }
    for (int a = 1; a < FX_ALGO_END; a++) {
        if (fx_coll_can_run(c, a)) {
            return a;
        }
    }
    return FX_ALGO_AUTO;
}

bool fx_coll_algo_fixed_peers(int algo)
{
    return algo == FX_ALGO_RING || algo == FX_ALGO_PAIR || algo == FX_ALGO_TREE ||
           algo == FX_ALGO_CHAIN;
}

void fx_coll_choose(const struct fx_tune_case *c, struct fx_tune_choice *out)
{
    int forced     = fx_coll_algo_forced(c->forced, c->coll);
    double best    = 0;
    double best_bw = 0;            /* the fastest's bandwidth term */
    int fixed      = FX_ALGO_AUTO; /* the fastest with fixed peers */
    double fixed_s = 0;
    struct fx_cost cost;

    memset(out, 0, sizeof(*out));
    if (forced != FX_ALGO_AUTO && fx_coll_can_run(c, forced)) {
        out->algo = forced;
        out->why  = "forced by FX_ALGO";
    } else {
        out->why = forced != FX_ALGO_AUTO ? "FX_ALGO's choice cannot run this case; cost model"
                                          : "cost model";
        for (int a = 1; a < FX_ALGO_END; a++) {
            if (!fx_coll_can_run(c, a) ||
                fx_coll_predict(c, a, default_chunk(c, a), &cost) != FX_OK) {
                continue;
            }
            if (out->algo == FX_ALGO_AUTO || cost.time_s < best) {
                out->algo = a;
                best      = cost.time_s;
                best_bw   = (double)cost.bytes * c->params->beta_s_per_byte;
            }
            if (fx_coll_algo_fixed_peers(a) && (fixed == FX_ALGO_AUTO || cost.time_s < fixed_s)) {
                fixed   = a;
                fixed_s = cost.time_s;
            }
        }
        /* Across hosts, a near-tie where moving the bytes is most of the time goes to fixed
         * peers (coll_tune.h). */
        if (c->spans_hosts && out->algo != FX_ALGO_AUTO && !fx_coll_algo_fixed_peers(out->algo) &&
            fixed != FX_ALGO_AUTO && best_bw >= best / 2 &&
            fixed_s <= best * (1 + FX_COLL_TUNE_RESOLUTION)) {
            out->algo = fixed;
            out->why  = forced != FX_ALGO_AUTO
                            ? "FX_ALGO's choice cannot run this case; cost model, near-tie "
                              "across hosts to fixed peers"
                            : "cost model, near-tie across hosts to fixed peers";
        }
        if (out->algo == FX_ALGO_AUTO) {
            out->algo = rule_of_thumb(c);
            out->why  = "rule of thumb";
        }
    }
    out->chunk_bytes = default_chunk(c, out->algo);
    if (fx_coll_predict(c, out->algo, out->chunk_bytes, &cost) == FX_OK) {
        out->predicted_s = cost.time_s;
    }
}
