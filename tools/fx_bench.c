/*
 * fx-bench: nccl-tests-compatible collective benchmark over the public API.
 *
 *   fx-bench COLLECTIVE [-b min] [-e max] [-f factor | -i step] [-n iters] [-w warmup]
 *            [-r reps] [-d dtype] [-o op] [--root R] [--algo NAME|all] [-c 0|1] [--np N]
 *            [--json] [--timeout-ms MS]
 *
 * COLLECTIVE is one of nccl-tests' names: allreduce, allgather, reducescatter, broadcast,
 * reduce, alltoall, sendrecv. Runs under a launcher's environment (fx_comm_init_env) or starts N
 * local ranks (--np N). Rank 0 prints nccl-tests' columns: size count type redop root time
 * algbw busbw #wrong, out of place then in place, then the algorithm the library used. Sizes
 * and bus-bandwidth factors are nccl-tests': size is the largest buffer of one rank (all-gather:
 * the gathered result; reduce-scatter: the input), busbw = algbw * 2(n-1)/n for all-reduce,
 * (n-1)/n for all-gather, reduce-scatter and all-to-all, 1 for the others. Time per op is the
 * maximum over ranks of the mean over the iterations, the median of that over -r repetitions.
 * GB/s = 1e9 bytes/s.
 *
 * --algo all compares, in one run, the tuner's choice with every algorithm of the collective
 * forced: one communicator per contender (fx_comm_split with FX_ALGO set for each), and per
 * size the contenders take turns, each timing its block of -n iterations once per repetition
 * in an order rotated per repetition, so that load from elsewhere falls on all of them alike.
 * Per size it prints each contender's median (out of place), the algorithm the tuner ran, the
 * tuner's time over the fastest forced algorithm's ("tuner/best") and the forced time of the
 * algorithm it chose over the same ("choice/best": the choice judged without a second sample
 * of the same algorithm). A forced algorithm the library cannot run at a size (it falls back)
 * is marked and left out of "best".
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "fabricx.h"
#include "tool_launch.h"

enum coll_kind {
    COLL_ALLREDUCE,
    COLL_ALLGATHER,
    COLL_REDUCESCATTER,
    COLL_BROADCAST,
    COLL_REDUCE,
    COLL_ALLTOALL,
    COLL_SENDRECV,
    COLL_END
};

/* What the benchmark needs to know of a collective. Buffers hold send_blocks and recv_blocks
 * blocks of `count` elements (the per-rank count); "n" stands for nranks. */
struct coll_desc {
    const char *name;
    const char *algos; /* the algorithms --algo all forces in turn, space-separated */
    int reduces;       /* takes an op */
    int rooted;        /* takes a root */
    int send_n;        /* the send buffer holds nranks blocks (else one) */
    int recv_n;        /* the receive buffer holds nranks blocks (else one) */
    int has_inplace;   /* an in-place form exists */
};

static const struct coll_desc colls[COLL_END] = {
    [COLL_ALLREDUCE]     = {"allreduce", "ring pair tree rd rabenseifner", 1, 0, 0, 0, 1},
    [COLL_ALLGATHER]     = {"allgather", "ring rd bruck", 0, 0, 0, 1, 1},
    [COLL_REDUCESCATTER] = {"reducescatter", "ring", 1, 0, 1, 0, 1},
    [COLL_BROADCAST]     = {"broadcast", "chain binomial", 0, 1, 0, 0, 1},
    [COLL_REDUCE]        = {"reduce", "chain binomial", 1, 1, 0, 0, 1},
    [COLL_ALLTOALL]      = {"alltoall", "pairwise", 0, 0, 1, 1, 0},
    [COLL_SENDRECV]      = {"sendrecv", "", 0, 0, 0, 0, 0},
};

struct opts {
    enum coll_kind coll;
    size_t minb;
    size_t maxb;
    double factor;
    size_t step;
    int iters;
    int warmup;
    int reps;
    fx_datatype dtype;
    fx_op op;
    int check;
    int np;
    int json;
    long timeout_ms;
    int root;
    const char *algo; /* --algo: exported as FX_ALGO=<collective>:<algo> before init */
    int compare;      /* --algo all */
};

struct result {
    size_t size;
    size_t count;
    double time_us[2]; /* out of place, in place */
    double algbw[2];
    double busbw[2];
    long wrong[2];
    char algo[2][32]; /* the algorithm the library used */
};

struct bench {
    struct opts o;
    fx_comm_t comm;
    int rank;
    int nranks;
    size_t esize;
    uint8_t *send;
    uint8_t *recv;
};

/* ------------------------------------------------------------------ arguments */

static int parse_size(const char *s, size_t *out)
{
    char *end = NULL;
    double v;

    errno = 0;
    v     = strtod(s, &end);
    if (errno != 0 || end == s || v < 0) {
        return -1;
    }
    switch (*end) {
    case 'K':
    case 'k':
        v *= 1024.0;
        end++;
        break;
    case 'M':
    case 'm':
        v *= 1048576.0;
        end++;
        break;
    case 'G':
    case 'g':
        v *= 1073741824.0;
        end++;
        break;
    default:
        break;
    }
    if (*end != '\0' || v > 1e15) {
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v     = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_dtype(const char *s, fx_datatype *out)
{
    static const struct {
        const char *name;
        fx_datatype dt;
    } aliases[] = {{"float16", FX_FLOAT16}, {"fp16", FX_FLOAT16},    {"float32", FX_FLOAT32},
                   {"fp32", FX_FLOAT32},    {"float64", FX_FLOAT64}, {"bf16", FX_BFLOAT16},
                   {"char", FX_INT8},       {"int", FX_INT32}};

    for (int d = 0; d < FX_NUM_DATATYPES; d++) {
        if (strcasecmp(s, fx_datatype_name((fx_datatype)d)) == 0) {
            *out = (fx_datatype)d;
            return 0;
        }
    }
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++) {
        if (strcasecmp(s, aliases[i].name) == 0) {
            *out = aliases[i].dt;
            return 0;
        }
    }
    return -1;
}

static int parse_op(const char *s, fx_op *out)
{
    for (int op = 0; op < FX_NUM_OPS; op++) {
        if (strcasecmp(s, fx_op_name((fx_op)op)) == 0) {
            *out = (fx_op)op;
            return 0;
        }
    }
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: fx-bench COLLECTIVE [options]\n"
               "  COLLECTIVE            allreduce allgather reducescatter broadcast reduce\n"
               "                        alltoall sendrecv\n"
               "  -b, --minbytes SIZE   smallest size (default 8; K/M/G suffixes)\n"
               "  -e, --maxbytes SIZE   largest size (default 128M)\n"
               "  -f, --stepfactor F    multiply the size by F (default 2)\n"
               "  -i, --stepbytes SIZE  add SIZE instead of multiplying\n"
               "  -n, --iters N         timed iterations per size (default 20)\n"
               "  -w, --warmup_iters N  untimed iterations first (default 5)\n"
               "  -r, --reps N          repetitions of the timed block; the median is shown (1)\n"
               "  -d, --datatype T      int8 uint8 int32 uint32 int64 uint64 half bfloat16 float\n"
               "                        double f8e4m3 f8e5m2 (default float)\n"
               "  -o, --op OP           sum prod min max avg (default sum)\n"
               "      --root R          root of broadcast and reduce (default 0)\n"
               "      --algo NAME       force the library's algorithm (FX_ALGO=COLLECTIVE:NAME)\n"
               "      --algo all        the tuner beside every algorithm forced, taking turns\n"
               "  -c, --check 0|1       check every result against a reference (default 1)\n"
               "      --np N            start N local ranks (else: the launcher's environment)\n"
               "      --json            print one JSON object instead of the table\n"
               "      --timeout-ms MS   kill the local ranks after MS (default 600000)\n");
}

/* Returns the value of an option that takes one (argv[*i] is the option). */
static const char *optval(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        fprintf(stderr, "fx-bench: %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

#define MAX_REPS 64 /* -r: the times per size that are kept for the median */

static int bad(const char *opt, const char *val)
{
    fprintf(stderr, "fx-bench: invalid value '%s' for %s\n", val, opt);
    return -1;
}

static int parse_one(struct opts *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const char *v;
    long n;

    if (strcmp(a, "--json") == 0) {
        o->json = 1;
        return 0;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
        usage(stdout);
        exit(0);
    }
    v = optval(argc, argv, i);
    if (v == NULL) {
        return -1;
    }
    if (!strcmp(a, "-b") || !strcmp(a, "--minbytes")) {
        return parse_size(v, &o->minb) ? bad(a, v) : 0;
    }
    if (!strcmp(a, "-e") || !strcmp(a, "--maxbytes")) {
        return parse_size(v, &o->maxb) ? bad(a, v) : 0;
    }
    if (!strcmp(a, "-i") || !strcmp(a, "--stepbytes")) {
        return parse_size(v, &o->step) || o->step == 0 ? bad(a, v) : 0;
    }
    if (!strcmp(a, "-f") || !strcmp(a, "--stepfactor")) {
        o->factor = strtod(v, NULL);
        return o->factor <= 1.0 ? bad(a, v) : 0;
    }
    if (!strcmp(a, "-d") || !strcmp(a, "--datatype")) {
        return parse_dtype(v, &o->dtype) ? bad(a, v) : 0;
    }
    if (!strcmp(a, "-o") || !strcmp(a, "--op")) {
        return parse_op(v, &o->op) ? bad(a, v) : 0;
    }
    if (!strcmp(a, "--root")) {
        if (parse_int(v, 0, 1000000, &n)) {
            return bad(a, v);
        }
        o->root = (int)n;
        return 0;
    }
    if (!strcmp(a, "--algo")) {
        o->algo = v;
        return 0;
    }
    if (!strcmp(a, "-n") || !strcmp(a, "--iters") || !strcmp(a, "-w") ||
        !strcmp(a, "--warmup_iters") || !strcmp(a, "-r") || !strcmp(a, "--reps") ||
        !strcmp(a, "-c") || !strcmp(a, "--check") || !strcmp(a, "--np") ||
        !strcmp(a, "--timeout-ms")) {
        int lo = (!strcmp(a, "-w") || !strcmp(a, "--warmup_iters") || !strcmp(a, "-c") ||
                  !strcmp(a, "--check"))
                     ? 0
                     : 1;

        if (parse_int(v, lo, a[1] == 'c' || !strcmp(a, "--check") ? 1 : 100000000, &n)) {
            return bad(a, v);
        }
        if ((!strcmp(a, "-r") || !strcmp(a, "--reps")) && n > MAX_REPS) {
            fprintf(stderr, "fx-bench: %s %s: at most %d repetitions per size\n", a, v, MAX_REPS);
            return -1;
        }
        if (!strcmp(a, "-n") || !strcmp(a, "--iters")) {
            o->iters = (int)n;
        } else if (!strcmp(a, "-w") || !strcmp(a, "--warmup_iters")) {
            o->warmup = (int)n;
        } else if (!strcmp(a, "-r") || !strcmp(a, "--reps")) {
            o->reps = (int)n;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--check")) {
            o->check = (int)n;
        } else if (!strcmp(a, "--np")) {
            o->np = (int)n;
        } else {
            o->timeout_ms = n;
        }
        return 0;
    }
    fprintf(stderr, "fx-bench: unknown option %s\n", a);
    return -1;
}

static int parse_args(struct opts *o, int argc, char **argv)
{
    *o = (struct opts){.minb       = 8,
                       .maxb       = 128u << 20,
                       .factor     = 2.0,
                       .iters      = 20,
                       .warmup     = 5,
                       .reps       = 1,
                       .dtype      = FX_FLOAT32,
                       .op         = FX_SUM,
                       .check      = 1,
                       .timeout_ms = 600000};
    if (argc < 2) {
        usage(stderr);
        return -1;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        exit(0);
    }
    o->coll = COLL_END;
    for (int c = 0; c < COLL_END; c++) {
        if (strcmp(argv[1], colls[c].name) == 0) {
            o->coll = (enum coll_kind)c;
        }
    }
    if (o->coll == COLL_END) {
        fprintf(stderr,
                "fx-bench: unknown collective '%s' (allreduce, allgather, reducescatter, "
                "broadcast, reduce, alltoall or sendrecv)\n",
                argv[1]);
        return -1;
    }
    for (int i = 2; i < argc; i++) {
        if (parse_one(o, argc, argv, &i) != 0) {
            return -1;
        }
    }
    if (o->minb > o->maxb) {
        fprintf(stderr, "fx-bench: -b %zu is larger than -e %zu\n", o->minb, o->maxb);
        return -1;
    }
    if (o->algo != NULL) {
        static char env[128];

        if (o->coll == COLL_SENDRECV) {
            fprintf(stderr, "fx-bench: sendrecv has no algorithm to choose\n");
            return -1;
        }
        if (strcmp(o->algo, "all") == 0) {
            o->compare = 1; /* each contender's communicator gets its own FX_ALGO */
            return 0;
        }
        snprintf(env, sizeof(env), "%s:%s", colls[o->coll].name, o->algo);
        setenv("FX_ALGO", env, 1); /* the library checks the name at init */
    }
    return 0;
}

/* ------------------------------------------------------------------ reference data */

/* Values whose reduction is exact in every datatype for up to 64 ranks: small integers for
 * sums (|sum| <= 4 * 64 = 256, exact in bf16), 1 or 2 for products over few ranks, and
 * anything for min/max. */
static double input_value(const struct opts *o, int rank, size_t i)
{
    unsigned h = (unsigned)(rank * 7 + (int)(i % 13));

    if (o->op == FX_PROD) {
        return (i + (size_t)rank) % 17 == 0 ? 2.0 : 1.0;
    }
    if (o->op == FX_MIN || o->op == FX_MAX) {
        int is_unsigned = o->dtype == FX_UINT8 || o->dtype == FX_UINT32 || o->dtype == FX_UINT64;

        return (double)(h % 97) - (is_unsigned ? 0.0 : 40.0);
    }
    if (o->dtype == FX_FLOAT8_E4M3 || o->dtype == FX_FLOAT8_E5M2) {
        return (double)(h % 3) - 1.0; /* sums of up to 8 ranks stay exact in fp8 */
    }
    return (double)(h % 5) - 1.0;
}

static uint16_t to_half(float f)
{
    uint32_t x;
    uint32_t ax;
    uint32_t h;
    uint32_t rem;
    uint16_t sign;

    memcpy(&x, &f, 4);
    sign = (uint16_t)((x >> 16) & 0x8000u);
    ax   = x & 0x7fffffffu;
    if (ax >= 0x477ff000u) {
        return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    }
    if (ax < 0x38800000u) {
        float a;

        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint16_t)rintf(a * 16777216.0f));
    }
    h   = ((ax >> 23) - 112) << 10 | (ax & 0x7fffffu) >> 13;
    rem = ax & 0x1fffu;
    h += rem > 0x1000u || (rem == 0x1000u && (h & 1u));
    return (uint16_t)(sign | h);
}

static uint16_t to_bf16(float f)
{
    uint32_t x;

    memcpy(&x, &f, 4);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* v rounded to nearest-even into OCP fp8 (e4m3: 3 mantissa bits, bias 7, saturating at 448;
 * e5m2: 2 bits, bias 15, overflowing to infinity). */
static uint8_t to_fp8(double v, int e4m3)
{
    int mbits    = e4m3 ? 3 : 2;
    int bias     = e4m3 ? 7 : 15;
    double maxv  = e4m3 ? 448.0 : 57344.0;
    uint8_t sign = v < 0 ? 0x80u : 0;
    double a     = fabs(v);
    int ex;
    double r;

    if (a == 0) {
        return sign;
    }
    ex = ilogb(a) < 1 - bias ? 1 - bias : ilogb(a);
    r  = nearbyint(a / ldexp(1.0, ex - mbits)) * ldexp(1.0, ex - mbits);
    if (r > maxv) {
        return (uint8_t)(sign | (e4m3 ? 0x7eu : 0x7cu)); /* 448, or infinity */
    }
    if (r < ldexp(1.0, 1 - bias)) { /* subnormal */
        return (uint8_t)(sign | (unsigned)(r / ldexp(1.0, 1 - bias - mbits)));
    }
    ex = ilogb(r);
    return (uint8_t)(sign | (unsigned)(ex + bias) << mbits |
                     ((unsigned)(r / ldexp(1.0, ex - mbits)) & ((1u << mbits) - 1)));
}

/* Stores v (an integer-valued double, or a reduction result) as dtype at p. */
static void store(fx_datatype dt, void *p, double v)
{
    switch (dt) {
    case FX_INT8:
        *(int8_t *)p = (int8_t)(int64_t)v;
        break;
    case FX_UINT8:
        *(uint8_t *)p = (uint8_t)(int64_t)v;
        break;
    case FX_INT32:
        *(int32_t *)p = (int32_t)(int64_t)v;
        break;
    case FX_UINT32:
        *(uint32_t *)p = (uint32_t)(int64_t)v;
        break;
    case FX_INT64:
        *(int64_t *)p = (int64_t)v;
        break;
    case FX_UINT64:
        *(uint64_t *)p = (uint64_t)(int64_t)v;
        break;
    case FX_FLOAT16:
        *(uint16_t *)p = to_half((float)v);
        break;
    case FX_BFLOAT16:
        *(uint16_t *)p = to_bf16((float)v);
        break;
    case FX_FLOAT8_E4M3:
    case FX_FLOAT8_E5M2:
        *(uint8_t *)p = to_fp8((double)(float)v, dt == FX_FLOAT8_E4M3);
        break;
    case FX_FLOAT32:
        *(float *)p = (float)v;
        break;
    default:
        *(double *)p = v;
        break;
    }
}

/* The reduction over ranks of element i of the inputs, as the library computes it. */
static double reduced(const struct bench *b, size_t i)
{
    double acc   = input_value(&b->o, 0, i);
    int64_t iacc = (int64_t)acc;
    int is_int   = b->o.dtype <= FX_UINT64;

    for (int r = 1; r < b->nranks; r++) {
        double v = input_value(&b->o, r, i);

        switch (b->o.op) {
        case FX_PROD:
            acc *= v;
            break;
        case FX_MIN:
            acc = v < acc ? v : acc;
            break;
        case FX_MAX:
            acc = v > acc ? v : acc;
            break;
        default:
            acc += v;
            break;
        }
    }
    iacc = (int64_t)acc;
    if (b->o.op == FX_AVG) {
        uint8_t tmp[8];

        /* Integer AVG: the wrapped sum in the type, divided in the type's signedness. */
        if (is_int) {
            store(b->o.dtype, tmp, (double)iacc);
            switch (b->o.dtype) {
            case FX_INT8:
                return (double)(*(int8_t *)tmp / b->nranks);
            case FX_UINT8:
                return (double)(*(uint8_t *)tmp / b->nranks);
            case FX_INT32:
                return (double)(*(int32_t *)tmp / b->nranks);
            case FX_UINT32:
                return (double)(*(uint32_t *)tmp / (uint32_t)b->nranks);
            case FX_INT64:
                return (double)(*(int64_t *)tmp / b->nranks);
            default:
                return (double)(int64_t)(*(uint64_t *)tmp / (uint64_t)b->nranks);
            }
        }
        return b->o.dtype == FX_FLOAT64 ? acc / b->nranks : (double)((float)acc / (float)b->nranks);
    }
    return acc;
}

/* Elements of this rank's send and receive buffers for a per-rank count. */
static size_t send_elems(const struct bench *b, size_t count)
{
    return count * (colls[b->o.coll].send_n ? (size_t)b->nranks : 1);
}

static size_t recv_elems(const struct bench *b, size_t count)
{
    return count * (colls[b->o.coll].recv_n ? (size_t)b->nranks : 1);
}

static void fill_inputs(const struct bench *b, size_t count, uint8_t *buf)
{
    size_t n = send_elems(b, count);

    for (size_t i = 0; i < n; i++) {
        store(b->o.dtype, buf + i * b->esize, input_value(&b->o, b->rank, i));
    }
}

/* The value element i of this rank's receive buffer must hold; 0 when it holds none (reduce on
 * a non-root). */
static int want_value(const struct bench *b, size_t count, size_t i, double *v)
{
    int prev = (b->rank + b->nranks - 1) % b->nranks;

    switch (b->o.coll) {
    case COLL_ALLREDUCE:
        *v = reduced(b, i);
        return 1;
    case COLL_ALLGATHER:
        *v = input_value(&b->o, (int)(i / count), i % count);
        return 1;
    case COLL_REDUCESCATTER:
        *v = reduced(b, (size_t)b->rank * count + i);
        return 1;
    case COLL_BROADCAST:
        *v = input_value(&b->o, b->o.root, i);
        return 1;
    case COLL_REDUCE:
        *v = reduced(b, i);
        return b->rank == b->o.root;
    case COLL_ALLTOALL: /* block s came from rank s, which sent its block for this rank */
        *v = input_value(&b->o, (int)(i / count), (size_t)b->rank * count + i % count);
        return 1;
    default:
        *v = input_value(&b->o, prev, i);
        return 1;
    }
}

static long count_wrong(const struct bench *b, const uint8_t *got, size_t count)
{
    size_t n   = recv_elems(b, count);
    long wrong = 0;
    uint8_t want[8];
    double v;

    for (size_t i = 0; i < n; i++) {
        if (want_value(b, count, i, &v)) {
            store(b->o.dtype, want, v);
            wrong += memcmp(want, got + i * b->esize, b->esize) != 0;
        }
    }
    return wrong;
}

/* ------------------------------------------------------------------ timing */

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static fx_status fail(const struct bench *b, const char *what, fx_status s)
{
    char msg[512] = "";

    fx_comm_get_error(b->comm, msg, sizeof(msg));
    fprintf(stderr, "fx-bench: rank %d: %s failed: %s: %s\n", b->rank, what, fx_strerror(s), msg);
    return s;
}

static fx_status run_op(const struct bench *b, const void *sbuf, void *rbuf, size_t count)
{
    const struct opts *o = &b->o;

    switch (o->coll) {
    case COLL_ALLREDUCE:
        return fx_allreduce(sbuf, rbuf, count, o->dtype, o->op, b->comm);
    case COLL_ALLGATHER:
        return fx_allgather(sbuf, rbuf, count, o->dtype, b->comm);
    case COLL_REDUCESCATTER:
        return fx_reduce_scatter(sbuf, rbuf, count, o->dtype, o->op, b->comm);
    case COLL_BROADCAST:
        return fx_broadcast(sbuf, rbuf, count, o->dtype, o->root, b->comm);
    case COLL_REDUCE:
        return fx_reduce(sbuf, rbuf, count, o->dtype, o->op, o->root, b->comm);
    case COLL_ALLTOALL:
        return fx_alltoall(sbuf, rbuf, count, o->dtype, b->comm);
    default:
        return fx_sendrecv(sbuf, count, (b->rank + 1) % b->nranks, rbuf, count,
                           (b->rank + b->nranks - 1) % b->nranks, o->dtype, b->comm);
    }
}

/* The buffers of a run: in place, the send data sits where the collective's in-place form
 * wants it (all-gather: the rank's block of the result; reduce-scatter: the result is the
 * rank's block of the input). */
static void run_bufs(const struct bench *b, size_t count, int inplace, const uint8_t **sbuf,
                     uint8_t **rbuf)
{
    size_t block = count * b->esize * (size_t)b->rank;

    *sbuf = b->send;
    *rbuf = b->recv;
    if (!inplace) {
        return;
    }
    switch (b->o.coll) {
    case COLL_ALLGATHER:
        *sbuf = b->recv + block;
        break;
    case COLL_REDUCESCATTER:
        *sbuf = b->recv;
        *rbuf = b->recv + block;
        break;
    default:
        *sbuf = b->recv;
        break;
    }
}

static fx_status barrier(const struct bench *b)
{
    double v = 0;

    return fx_allreduce(&v, &v, 1, FX_FLOAT64, FX_SUM, b->comm);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;

    return (x > y) - (x < y);
}

/* Seconds per op: max over ranks of the mean, median over repetitions. *algo gets the name of
 * the algorithm that ran the timed operations. */
static fx_status time_ops(const struct bench *b, size_t count, int inplace, double *out, char *algo,
                          size_t algolen)
{
    const uint8_t *sbuf;
    uint8_t *rbuf;
    double reps[MAX_REPS];
    int nreps   = b->o.reps < MAX_REPS ? b->o.reps : MAX_REPS;
    fx_status s = FX_OK;

    run_bufs(b, count, inplace, &sbuf, &rbuf);
    for (int i = 0; i < b->o.warmup && s == FX_OK; i++) {
        s = run_op(b, sbuf, rbuf, count);
    }
    for (int r = 0; r < nreps && s == FX_OK; r++) {
        double t0;

        s  = barrier(b);
        t0 = now_s();
        for (int i = 0; i < b->o.iters && s == FX_OK; i++) {
            s = run_op(b, sbuf, rbuf, count);
        }
        reps[r] = (now_s() - t0) / b->o.iters;
        snprintf(algo, algolen, "%s",
                 b->o.coll == COLL_SENDRECV ? "p2p" : fx_comm_last_algo(b->comm));
        if (s == FX_OK) {
            s = fx_allreduce(&reps[r], &reps[r], 1, FX_FLOAT64, FX_MAX, b->comm);
        }
    }
    if (s != FX_OK) {
        return fail(b, "timed run", s);
    }
    qsort(reps, (size_t)nreps, sizeof(double), cmp_double);
    *out = reps[nreps / 2];
    return FX_OK;
}

/* One checked run out of place or in place; the wrong count is summed over ranks. */
static fx_status check_ops(const struct bench *b, size_t count, int inplace, long *wrong)
{
    const uint8_t *sbuf;
    uint8_t *rbuf;
    double w;
    fx_status s;

    run_bufs(b, count, inplace, &sbuf, &rbuf);
    memset(b->recv, 0xff, b->o.maxb); /* stale results must not pass */
    fill_inputs(b, count, (uint8_t *)sbuf);
    s = run_op(b, sbuf, rbuf, count);
    if (s != FX_OK) {
        return fail(b, "checked run", s);
    }
    w      = (double)count_wrong(b, rbuf, count);
    s      = fx_allreduce(&w, &w, 1, FX_FLOAT64, FX_SUM, b->comm);
    *wrong = (long)w;
    return s == FX_OK ? FX_OK : fail(b, "check reduction", s);
}

/* nccl-tests' bus-bandwidth factor. */
static double bus_factor(const struct bench *b)
{
    double n = b->nranks;

    switch (b->o.coll) {
    case COLL_ALLREDUCE:
        return 2.0 * (n - 1) / n;
    case COLL_ALLGATHER:
    case COLL_REDUCESCATTER:
    case COLL_ALLTOALL:
        return (n - 1) / n;
    default:
        return 1.0;
    }
}

/* Bytes per unit of the per-rank count in the reported size (the rank's largest buffer). */
static size_t size_unit(const struct bench *b)
{
    const struct coll_desc *d = &colls[b->o.coll];

    return b->esize * (d->send_n || d->recv_n ? (size_t)b->nranks : 1);
}

static fx_status measure(const struct bench *b, size_t size, struct result *res)
{
    size_t unit  = size_unit(b);
    size_t count = size / unit;

    memset(res, 0, sizeof(*res));
    res->size  = count * unit;
    res->count = res->size / b->esize;
    for (int ip = 0; ip < 2; ip++) {
        double t = 0;
        fx_status s;

        res->wrong[ip] = -1;
        snprintf(res->algo[ip], sizeof(res->algo[ip]), "-");
        if (ip == 1 && !colls[b->o.coll].has_inplace) {
            continue;
        }
        fill_inputs(b, count, b->send);
        if (ip == 1) {
            const uint8_t *sbuf;
            uint8_t *rbuf;

            run_bufs(b, count, 1, &sbuf, &rbuf);
            memcpy((uint8_t *)sbuf, b->send, send_elems(b, count) * b->esize);
        }
        s = time_ops(b, count, ip, &t, res->algo[ip], sizeof(res->algo[ip]));
        if (s != FX_OK) {
            return s;
        }
        res->time_us[ip] = t * 1e6;
        res->algbw[ip]   = t > 0 ? (double)res->size / t / 1e9 : 0;
        res->busbw[ip]   = res->algbw[ip] * bus_factor(b);
        if (b->o.check) {
            s = check_ops(b, count, ip, &res->wrong[ip]);
            if (s != FX_OK) {
                return s;
            }
        }
    }
    return FX_OK;
}

/* ------------------------------------------------------------------ output */

static const char *op_text(const struct bench *b)
{
    return colls[b->o.coll].reduces ? fx_op_name(b->o.op) : "none";
}

static void print_header(const struct bench *b)
{
    printf("# fx-bench %s: nranks %d, datatype %s, op %s, root %d, iters %d, warmup %d, reps %d, "
           "check %d\n",
           colls[b->o.coll].name, b->nranks, fx_datatype_name(b->o.dtype), op_text(b),
           colls[b->o.coll].rooted ? b->o.root : -1, b->o.iters, b->o.warmup, b->o.reps,
           b->o.check);
    printf("#\n#%62s%33s\n", "out-of-place", "in-place");
    printf("# %10s %12s %8s %6s %6s %8s %7s %7s %6s %8s %7s %7s %6s  %s\n", "size", "count", "type",
           "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong",
           "algorithm");
    printf("# %10s %12s %8s %6s %6s %8s %7s %7s %6s %8s %7s %7s %6s\n", "(B)", "(elements)", "", "",
           "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "");
}

/* time algbw busbw #wrong of one half of a row, N/A throughout where it did not run. */
static void format_half(const struct result *r, int ip, char *buf, size_t len)
{
    char w[24];

    if (r->wrong[ip] < 0) {
        snprintf(w, sizeof(w), "N/A");
    } else {
        snprintf(w, sizeof(w), "%ld", r->wrong[ip]);
    }
    if (strcmp(r->algo[ip], "-") == 0) {
        snprintf(buf, len, "%8s %7s %7s %6s", "N/A", "N/A", "N/A", "N/A");
    } else {
        snprintf(buf, len, "%8.1f %7.2f %7.2f %6s", r->time_us[ip], r->algbw[ip], r->busbw[ip], w);
    }
}

static void print_row(const struct bench *b, const struct result *r)
{
    char half[2][64];
    char algo[72];

    format_half(r, 0, half[0], sizeof(half[0]));
    format_half(r, 1, half[1], sizeof(half[1]));
    if (strcmp(r->algo[1], "-") == 0 || strcmp(r->algo[0], r->algo[1]) == 0) {
        snprintf(algo, sizeof(algo), "%s", r->algo[0]);
    } else {
        snprintf(algo, sizeof(algo), "%s/%s", r->algo[0], r->algo[1]);
    }
    printf("  %10zu %12zu %8s %6s %6d %s %s  %s\n", r->size, r->count, fx_datatype_name(b->o.dtype),
           op_text(b), colls[b->o.coll].rooted ? b->o.root : -1, half[0], half[1], algo);
    fflush(stdout);
}

static void print_json(const struct bench *b, const struct result *res, int n, double avg)
{
    printf("{\"collective\": \"%s\", \"nranks\": %d, \"dtype\": \"%s\", \"op\": \"%s\", "
           "\"root\": %d, \"iters\": %d, \"warmup\": %d, \"reps\": %d, \"results\": [",
           colls[b->o.coll].name, b->nranks, fx_datatype_name(b->o.dtype), op_text(b),
           colls[b->o.coll].rooted ? b->o.root : -1, b->o.iters, b->o.warmup, b->o.reps);
    for (int i = 0; i < n; i++) {
        const struct result *r = &res[i];

        printf("%s{\"size\": %zu, \"count\": %zu", i ? ", " : "", r->size, r->count);
        for (int ip = 0; ip < 2; ip++) {
            if (strcmp(r->algo[ip], "-") == 0) {
                printf(", \"%s\": null", ip ? "ip" : "oop");
                continue;
            }
            printf(", \"%s\": {\"time_us\": %.3f, \"algbw\": %.4f, \"busbw\": %.4f, "
                   "\"algo\": \"%s\", \"wrong\": ",
                   ip ? "ip" : "oop", r->time_us[ip], r->algbw[ip], r->busbw[ip], r->algo[ip]);
            if (r->wrong[ip] < 0) {
                printf("null}");
            } else {
                printf("%ld}", r->wrong[ip]);
            }
        }
        printf("}");
    }
    printf("], \"avg_busbw\": %.4f}\n", avg);
}

/* ------------------------------------------------------------------ one rank */

static size_t next_size(const struct opts *o, size_t size)
{
    size_t next = o->step ? size + o->step : (size_t)((double)size * o->factor);

    return next > size ? next : size + 1;
}

/* ------------------------------------------------------------------ --algo all */

#define MAX_CONTENDERS 8

struct contender {
    char name[24]; /* "tuner" or the forced algorithm */
    fx_comm_t comm;
    double t[MAX_REPS]; /* seconds per op, one per repetition */
    char algo[32];      /* what the library ran at the current size */
    double median;
};

/* A communicator over the same ranks whose FX_ALGO forces `algo` for the benchmarked collective
 * (NULL: the tuner's choice). */
static fx_status contender_comm(const struct bench *b, const char *algo, fx_comm_t *out)
{
    char env[128];
    fx_status s;

    if (algo == NULL) {
        env[0] = '\0';
    } else {
        snprintf(env, sizeof(env), "%s:%s", colls[b->o.coll].name, algo);
    }
    setenv("FX_ALGO", env, 1);
    s = fx_comm_split(b->comm, 0, b->rank, out);
    unsetenv("FX_ALGO");
    return s == FX_OK ? FX_OK : fail(b, "creating a contender's communicator", s);
}

static int set_up_contenders(const struct bench *b, struct contender *c, int *n)
{
    char list[128];
    char *save = NULL;

    *n = 0;
    snprintf(c[0].name, sizeof(c[0].name), "tuner");
    if (contender_comm(b, NULL, &c[0].comm) != FX_OK) {
        return -1;
    }
    *n = 1;
    snprintf(list, sizeof(list), "%s", colls[b->o.coll].algos);
    for (char *a = strtok_r(list, " ", &save); a != NULL && *n < MAX_CONTENDERS;
         a       = strtok_r(NULL, " ", &save)) {
        snprintf(c[*n].name, sizeof(c[*n].name), "%s", a);
        if (contender_comm(b, a, &c[*n].comm) != FX_OK) {
            return -1;
        }
        (*n)++;
    }
    return 0;
}

/* One block of b->o.iters ops on contender c's communicator: seconds per op, max over ranks. */
static fx_status time_block(const struct bench *b, struct contender *c, size_t count, int warm,
                            double *out)
{
    struct bench cb = *b;
    const uint8_t *sbuf;
    uint8_t *rbuf;
    fx_status s = FX_OK;
    double t0;

    cb.comm = c->comm;
    run_bufs(&cb, count, 0, &sbuf, &rbuf);
    for (int i = 0; i < warm && s == FX_OK; i++) {
        s = run_op(&cb, sbuf, rbuf, count);
    }
    if (s == FX_OK) {
        s = barrier(&cb);
    }
    t0 = now_s();
    for (int i = 0; i < b->o.iters && s == FX_OK; i++) {
        s = run_op(&cb, sbuf, rbuf, count);
    }
    *out = (now_s() - t0) / b->o.iters;
    snprintf(c->algo, sizeof(c->algo), "%s", fx_comm_last_algo(c->comm));
    if (s == FX_OK) {
        s = fx_allreduce(out, out, 1, FX_FLOAT64, FX_MAX, c->comm);
    }
    return s == FX_OK ? FX_OK : fail(&cb, c->name, s);
}

/* The contenders' medians at one size; *wrong sums the checked runs' wrong elements. */
static fx_status compare_size(const struct bench *b, struct contender *c, int nc, size_t count,
                              long *wrong)
{
    int nreps = b->o.reps < MAX_REPS ? b->o.reps : MAX_REPS;

    *wrong = 0;
    fill_inputs(b, count, b->send);
    for (int k = 0; k < nc && b->o.check; k++) {
        struct bench cb = *b;
        long w          = 0;

        fx_status s;

        cb.comm = c[k].comm;
        s       = check_ops(&cb, count, 0, &w);
        if (s != FX_OK) {
            return s;
        }
        *wrong += w;
    }
    for (int r = 0; r < nreps; r++) {
        for (int j = 0; j < nc; j++) {
            int k       = (j + r) % nc;
            fx_status s = time_block(b, &c[k], count, r == 0 ? b->o.warmup : 0, &c[k].t[r]);

            if (s != FX_OK) {
                return s;
            }
        }
    }
    for (int k = 0; k < nc; k++) {
        qsort(c[k].t, (size_t)nreps, sizeof(double), cmp_double);
        c[k].median = c[k].t[nreps / 2];
    }
    return FX_OK;
}

/* tuner/best and choice/best at one size (0 where there is no forced algorithm to compare). */
static void compare_ratios(const struct contender *c, int nc, double *tuner, double *choice)
{
    double best = 0;

    *tuner  = 0;
    *choice = 0;
    for (int k = 1; k < nc; k++) {
        if (strcmp(c[k].algo, c[k].name) == 0 && (best == 0 || c[k].median < best)) {
            best = c[k].median;
        }
    }
    if (best <= 0) {
        return;
    }
    *tuner = c[0].median / best;
    for (int k = 1; k < nc; k++) {
        if (strcmp(c[k].name, c[0].algo) == 0 && strcmp(c[k].algo, c[k].name) == 0) {
            *choice = c[k].median / best;
        }
    }
}

static int bench_compare(struct bench *b)
{
    struct contender c[MAX_CONTENDERS];
    int nc          = 0;
    int rc          = 0;
    long wrong      = 0;
    double worst[2] = {0, 0};
    int rows        = 0;

    memset(c, 0, sizeof(c));
    if (set_up_contenders(b, c, &nc) != 0) {
        rc = 1;
    }
    if (rc == 0 && b->rank == 0) {
        if (b->o.json) {
            printf("{\"collective\": \"%s\", \"nranks\": %d, \"dtype\": \"%s\", \"op\": \"%s\", "
                   "\"iters\": %d, \"warmup\": %d, \"reps\": %d, \"compare\": [",
                   colls[b->o.coll].name, b->nranks, fx_datatype_name(b->o.dtype), op_text(b),
                   b->o.iters, b->o.warmup, b->o.reps);
        } else {
            printf("# fx-bench %s --algo all: nranks %d, datatype %s, op %s, iters %d, warmup "
                   "%d, reps %d (contenders take turns; medians, out of place, us; * = fell "
                   "back to another algorithm)\n# %10s",
                   colls[b->o.coll].name, b->nranks, fx_datatype_name(b->o.dtype), op_text(b),
                   b->o.iters, b->o.warmup, b->o.reps, "size");
            for (int k = 0; k < nc; k++) {
                printf(" %13s", c[k].name);
            }
            printf(" %13s %11s %12s\n", "tuner ran", "tuner/best", "choice/best");
        }
    }
    for (size_t size = b->o.minb; rc == 0 && size <= b->o.maxb; size = next_size(&b->o, size)) {
        size_t count = size / size_unit(b);
        double ratio[2];
        long w = 0;

        if (count == 0) {
            continue;
        }
        if (compare_size(b, c, nc, count, &w) != FX_OK) {
            rc = 1;
            break;
        }
        wrong += w;
        compare_ratios(c, nc, &ratio[0], &ratio[1]);
        for (int i = 0; i < 2; i++) {
            worst[i] = ratio[i] > worst[i] ? ratio[i] : worst[i];
        }
        if (b->rank != 0) {
            rows++;
            continue;
        }
        if (b->o.json) {
            printf("%s{\"size\": %zu, \"contenders\": [", rows ? ", " : "", count * size_unit(b));
            for (int k = 0; k < nc; k++) {
                printf("%s{\"name\": \"%s\", \"algo\": \"%s\", \"time_us\": %.3f}", k ? ", " : "",
                       c[k].name, c[k].algo, c[k].median * 1e6);
            }
            printf("], \"tuner_over_best\": %.4f, \"choice_over_best\": %.4f}", ratio[0], ratio[1]);
        } else {
            printf("  %10zu", count * size_unit(b));
            for (int k = 0; k < nc; k++) {
                printf(" %12.1f%s", c[k].median * 1e6,
                       k > 0 && strcmp(c[k].algo, c[k].name) != 0 ? "*" : " ");
            }
            printf(" %13s %11.2f %12.2f\n", c[0].algo, ratio[0], ratio[1]);
            fflush(stdout);
        }
        rows++;
    }
    if (b->rank == 0 && rc == 0) {
        if (b->o.json) {
            printf("], \"worst_tuner_over_best\": %.4f, \"worst_choice_over_best\": %.4f, "
                   "\"wrong\": %ld}\n",
                   worst[0], worst[1], wrong);
        } else {
            printf("# Out of bounds values : %ld %s\n", wrong, wrong ? "FAILED" : "OK");
            printf("# Worst tuner/best     : %.2f\n# Worst choice/best    : %.2f\n#\n", worst[0],
                   worst[1]);
        }
    }
    for (int k = 0; k < nc; k++) {
        fx_comm_destroy(c[k].comm);
    }
    return rc != 0 ? 1 : wrong != 0;
}

static int bench_sizes(struct bench *b)
{
    struct result res[128];
    int n      = 0;
    long wrong = 0;
    double sum = 0;

    if (b->rank == 0 && !b->o.json) {
        print_header(b);
    }
    for (size_t size = b->o.minb; size <= b->o.maxb && n < 128; size = next_size(&b->o, size)) {
        if (size / size_unit(b) == 0) {
            continue;
        }
        if (measure(b, size, &res[n]) != FX_OK) {
            return 1;
        }
        wrong += (res[n].wrong[0] > 0 ? res[n].wrong[0] : 0) +
                 (res[n].wrong[1] > 0 ? res[n].wrong[1] : 0);
        sum += colls[b->o.coll].has_inplace ? (res[n].busbw[0] + res[n].busbw[1]) / 2
                                            : res[n].busbw[0];
        if (b->rank == 0 && !b->o.json) {
            print_row(b, &res[n]);
        }
        n++;
    }
    if (b->rank == 0 && b->o.json) {
        print_json(b, res, n, n ? sum / n : 0);
    } else if (b->rank == 0) {
        printf("# Out of bounds values : %ld %s\n", wrong, wrong ? "FAILED" : "OK");
        printf("# Avg bus bandwidth    : %.4f\n#\n", n ? sum / n : 0);
    }
    return wrong != 0;
}

static int alloc_buffers(struct bench *b)
{
    size_t max = b->o.maxb + 64;

    if (posix_memalign((void **)&b->send, 4096, max) != 0 ||
        posix_memalign((void **)&b->recv, 4096, max) != 0) {
        fprintf(stderr, "fx-bench: rank %d: cannot allocate 2 x %zu bytes\n", b->rank, max);
        return -1;
    }
    /* First touch now: page faults must not be timed. */
    memset(b->send, 0, max);
    memset(b->recv, 0, max);
    return 0;
}

static int run_rank(const struct opts *o, fx_comm_t comm)
{
    struct bench b = {.o = *o, .comm = comm};
    int rc;

    fx_comm_rank(comm, &b.rank);
    fx_comm_size(comm, &b.nranks);
    b.esize = fx_datatype_size(o->dtype);
    if (colls[o->coll].rooted && o->root >= b.nranks) {
        if (b.rank == 0) {
            fprintf(stderr, "fx-bench: --root %d is not a rank of %d\n", o->root, b.nranks);
        }
        fx_comm_destroy(comm);
        return 2;
    }
    if (o->coll == COLL_SENDRECV && b.nranks < 2) {
        if (b.rank == 0) {
            fprintf(stderr, "fx-bench: sendrecv needs at least 2 ranks\n");
        }
        fx_comm_destroy(comm);
        return 2;
    }
    if (alloc_buffers(&b) != 0) {
        fx_comm_destroy(comm);
        return 1;
    }
    rc = o->compare ? bench_compare(&b) : bench_sizes(&b);
    free(b.send);
    free(b.recv);
    fx_comm_destroy(comm);
    return rc;
}

/* ------------------------------------------------------------------ start */

static int local_rank(fx_comm_t comm, void *arg)
{
    return run_rank(arg, comm);
}

int main(int argc, char **argv)
{
    struct opts o;

    if (parse_args(&o, argc, argv) != 0) {
        return 2;
    }
    return tool_run("fx-bench", o.np, o.timeout_ms, 1, local_rank, &o);
}
