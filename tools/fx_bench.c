/*
 * fx-bench: nccl-tests-compatible collective benchmark over the public API.
 *
 *   fx-bench allreduce|allgather [-b min] [-e max] [-f factor | -i step] [-n iters] [-w warmup]
 *            [-r reps] [-d dtype] [-o op] [-c 0|1] [--np N] [--json] [--timeout-ms MS]
 *
 * Runs under a launcher's environment (fx_comm_init_env) or starts N local ranks (--np N).
 * Rank 0 prints nccl-tests' columns: size count type redop root time algbw busbw #wrong, out of
 * place then in place. Time per op is the maximum over ranks of the mean over the iterations,
 * the median of that over -r repetitions. GB/s = 1e9 bytes/s.
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
};

struct result {
    size_t size;
    size_t count;
    double time_us[2]; /* out of place, in place */
    double algbw[2];
    double busbw[2];
    long wrong[2];
};

struct bench {
    struct opts o;
    fx_comm_t comm;
    int rank;
    int nranks;
    size_t esize;
    uint8_t *send;
    uint8_t *recv;
    uint8_t *ref;
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
    fprintf(f, "usage: fx-bench allreduce|allgather [options]\n"
               "  -b, --minbytes SIZE   smallest size (default 8; K/M/G suffixes)\n"
               "  -e, --maxbytes SIZE   largest size (default 128M)\n"
               "  -f, --stepfactor F    multiply the size by F (default 2)\n"
               "  -i, --stepbytes SIZE  add SIZE instead of multiplying\n"
               "  -n, --iters N         timed iterations per size (default 20)\n"
               "  -w, --warmup_iters N  untimed iterations first (default 5)\n"
               "  -r, --reps N          repetitions of the timed block; the median is shown (1)\n"
               "  -d, --datatype T      int8 uint8 int32 uint32 int64 uint64 half bfloat16 float\n"
               "                        double (default float)\n"
               "  -o, --op OP           sum prod min max avg (default sum)\n"
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
    if (strcmp(argv[1], "allreduce") == 0) {
        o->coll = COLL_ALLREDUCE;
    } else if (strcmp(argv[1], "allgather") == 0) {
        o->coll = COLL_ALLGATHER;
    } else if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        exit(0);
    } else {
        fprintf(stderr, "fx-bench: unknown collective '%s' (allreduce or allgather)\n", argv[1]);
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
    case FX_FLOAT32:
        *(float *)p = (float)v;
        break;
    default:
        *(double *)p = v;
        break;
    }
}

/* The expected all-reduce result of element i, as the library computes it. */
static double expected(const struct bench *b, size_t i)
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

static void fill_inputs(struct bench *b, size_t count, uint8_t *buf)
{
    for (size_t i = 0; i < count; i++) {
        store(b->o.dtype, buf + i * b->esize, input_value(&b->o, b->rank, i));
    }
}

static long count_wrong(const struct bench *b, const uint8_t *got, size_t count)
{
    long wrong = 0;
    uint8_t want[8];

    for (size_t i = 0; i < count; i++) {
        if (b->o.coll == COLL_ALLREDUCE) {
            store(b->o.dtype, want, expected(b, i));
        } else {
            size_t per = count / (size_t)b->nranks;

            store(b->o.dtype, want, input_value(&b->o, (int)(i / per), i % per));
        }
        wrong += memcmp(want, got + i * b->esize, b->esize) != 0;
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
    if (b->o.coll == COLL_ALLREDUCE) {
        return fx_allreduce(sbuf, rbuf, count, b->o.dtype, b->o.op, b->comm);
    }
    return fx_allgather(sbuf, rbuf, count, b->o.dtype, b->comm);
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

/* Seconds per op: max over ranks of the mean, median over repetitions. */
static fx_status time_ops(const struct bench *b, size_t count, int inplace, double *out)
{
    const uint8_t *sbuf = b->send;
    uint8_t *rbuf       = b->recv;
    double reps[64];
    int nreps   = b->o.reps < 64 ? b->o.reps : 64;
    fx_status s = FX_OK;

    if (inplace) {
        sbuf = b->o.coll == COLL_ALLREDUCE ? rbuf : rbuf + (size_t)b->rank * count * b->esize;
    }
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
    size_t total = b->o.coll == COLL_ALLGATHER ? count * (size_t)b->nranks : count;
    uint8_t *own =
        b->o.coll == COLL_ALLREDUCE ? b->recv : b->recv + (size_t)b->rank * count * b->esize;
    double w;
    fx_status s;

    fill_inputs((struct bench *)b, count, inplace ? own : b->send);
    s = run_op(b, inplace ? own : b->send, b->recv, count);
    if (s != FX_OK) {
        return fail(b, "checked run", s);
    }
    w      = (double)count_wrong(b, b->recv, total);
    s      = fx_allreduce(&w, &w, 1, FX_FLOAT64, FX_SUM, b->comm);
    *wrong = (long)w;
    return s == FX_OK ? FX_OK : fail(b, "check reduction", s);
}

static fx_status measure(const struct bench *b, size_t size, struct result *res)
{
    size_t unit   = b->esize * (b->o.coll == COLL_ALLGATHER ? (size_t)b->nranks : 1);
    size_t count  = size / unit;
    double factor = b->o.coll == COLL_ALLREDUCE ? 2.0 * (b->nranks - 1) / b->nranks
                                                : (double)(b->nranks - 1) / b->nranks;

    memset(res, 0, sizeof(*res));
    res->size  = count * unit;
    res->count = b->o.coll == COLL_ALLREDUCE ? count : count * (size_t)b->nranks;
    for (int ip = 0; ip < 2; ip++) {
        double t = 0;
        fx_status s;

        fill_inputs((struct bench *)b, count, b->send);
        memcpy(b->recv + (size_t)b->rank * count * b->esize * (b->o.coll == COLL_ALLGATHER),
               b->send, count * b->esize);
        s = time_ops(b, count, ip, &t);
        if (s != FX_OK) {
            return s;
        }
        res->time_us[ip] = t * 1e6;
        res->algbw[ip]   = t > 0 ? (double)res->size / t / 1e9 : 0;
        res->busbw[ip]   = res->algbw[ip] * factor;
        res->wrong[ip]   = -1;
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

static void print_header(const struct bench *b)
{
    printf("# fx-bench %s: nranks %d, datatype %s, op %s, iters %d, warmup %d, reps %d, "
           "check %d\n",
           b->o.coll == COLL_ALLREDUCE ? "allreduce" : "allgather", b->nranks,
           fx_datatype_name(b->o.dtype), b->o.coll == COLL_ALLREDUCE ? fx_op_name(b->o.op) : "none",
           b->o.iters, b->o.warmup, b->o.reps, b->o.check);
    printf("#\n#%62s%33s\n", "out-of-place", "in-place");
    printf("# %10s %12s %8s %6s %6s %8s %7s %7s %6s %8s %7s %7s %6s\n", "size", "count", "type",
           "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong");
    printf("# %10s %12s %8s %6s %6s %8s %7s %7s %6s %8s %7s %7s %6s\n", "(B)", "(elements)", "", "",
           "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "");
}

static void print_row(const struct bench *b, const struct result *r)
{
    char w[2][24];

    for (int ip = 0; ip < 2; ip++) {
        if (r->wrong[ip] < 0) {
            snprintf(w[ip], sizeof(w[ip]), "N/A");
        } else {
            snprintf(w[ip], sizeof(w[ip]), "%ld", r->wrong[ip]);
        }
    }
    printf("  %10zu %12zu %8s %6s %6d %8.1f %7.2f %7.2f %6s %8.1f %7.2f %7.2f %6s\n", r->size,
           r->count, fx_datatype_name(b->o.dtype),
           b->o.coll == COLL_ALLREDUCE ? fx_op_name(b->o.op) : "none", -1, r->time_us[0],
           r->algbw[0], r->busbw[0], w[0], r->time_us[1], r->algbw[1], r->busbw[1], w[1]);
    fflush(stdout);
}

static void print_json(const struct bench *b, const struct result *res, int n, double avg)
{
    printf("{\"collective\": \"%s\", \"nranks\": %d, \"dtype\": \"%s\", \"op\": \"%s\", "
           "\"iters\": %d, \"warmup\": %d, \"reps\": %d, \"results\": [",
           b->o.coll == COLL_ALLREDUCE ? "allreduce" : "allgather", b->nranks,
           fx_datatype_name(b->o.dtype), b->o.coll == COLL_ALLREDUCE ? fx_op_name(b->o.op) : "none",
           b->o.iters, b->o.warmup, b->o.reps);
    for (int i = 0; i < n; i++) {
        const struct result *r = &res[i];

        printf("%s{\"size\": %zu, \"count\": %zu", i ? ", " : "", r->size, r->count);
        for (int ip = 0; ip < 2; ip++) {
            printf(", \"%s\": {\"time_us\": %.3f, \"algbw\": %.4f, \"busbw\": %.4f, \"wrong\": ",
                   ip ? "ip" : "oop", r->time_us[ip], r->algbw[ip], r->busbw[ip]);
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
        size_t unit = b->esize * (b->o.coll == COLL_ALLGATHER ? (size_t)b->nranks : 1);

        if (size / unit == 0) {
            continue;
        }
        if (measure(b, size, &res[n]) != FX_OK) {
            return 1;
        }
        wrong += (res[n].wrong[0] > 0 ? res[n].wrong[0] : 0) +
                 (res[n].wrong[1] > 0 ? res[n].wrong[1] : 0);
        sum += (res[n].busbw[0] + res[n].busbw[1]) / 2;
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
    if (alloc_buffers(&b) != 0) {
        fx_comm_destroy(comm);
        return 1;
    }
    rc = bench_sizes(&b);
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
