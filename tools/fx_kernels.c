/*
 * fx-kernels: bandwidth of the reduction kernels against a plain fp32 a[i] += b[i] loop compiled
 * for the same ISA, on arrays larger than the last-level cache.
 *
 *   fx-kernels [--kernels auto|scalar|avx2|avx512|avx512fp16]
 *              [--op sum|prod|min|max|avg|all] [--dtype NAME] [--reps N] [--ms M] [--bytes SIZE]
 *              [--nranks N]
 *
 * Each kernel runs in place (dst = a, as the executor reduces a received chunk into its
 * buffer) over arrays of the same byte size as the baseline's. Bandwidth counts the bytes of the
 * destination and both inputs (3 x array bytes) per call for the kernel and the baseline alike.
 * Baseline and kernel alternate, --ms milliseconds each, --reps times; the medians and their
 * ratio are printed with the target (fp32 at least 0.90, fp16/bf16/fp8 at least 0.70).
 * AVG times the last step of an average over --nranks ranks (fx_coll_reduce_final).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "collectives/coll_kernels.h"
#include "libfabricx/fx_config.h"

struct opts {
    enum fx_coll_kset kset;
    int op;    /* -1: every op */
    int dtype; /* -1: every datatype */
    int reps;
    int ms;
    size_t bytes;
    int nranks; /* the rank count AVG divides by */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fx-kernels [--kernels auto|scalar|avx2|avx512|avx512fp16]\n"
            "                  [--op sum|prod|min|max|avg|all] [--dtype NAME] [--reps N] [--ms M]\n"
            "                  [--bytes SIZE] [--nranks N]\n"
            "  --kernels SET  kernel set to measure (default auto: the widest the CPU runs)\n"
            "  --op OP        reduction operator, or all (default sum)\n"
            "  --dtype NAME   one datatype (fx_datatype_name spelling; default every one)\n"
            "  --reps N       alternations of baseline and kernel (default 5)\n"
            "  --ms M         milliseconds per measurement (default 200)\n"
            "  --bytes SIZE   bytes per array, K/M/G suffixes (default the last-level cache size,\n"
            "                 at least 64M; a call streams 3 arrays' worth)\n"
            "  --nranks N     rank count AVG divides by (default 4)\n");
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The last-level cache in bytes (sysconf, then sysfs), 0 when unknown. */
static size_t llc_bytes(void)
{
    long v  = sysconf(_SC_LEVEL3_CACHE_SIZE);
    FILE *f = NULL;
    unsigned long long kb;

    if (v > 0) {
        return (size_t)v;
    }
    f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (f == NULL) {
        return 0;
    }
    if (fscanf(f, "%lluK", &kb) != 1) {
        kb = 0;
    }
    fclose(f);
    return (size_t)kb << 10;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v     = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_op(const char *s, int *out)
{
    if (strcmp(s, "all") == 0) {
        *out = -1;
        return 0;
    }
    for (int op = 0; op < FX_NUM_OPS; op++) {
        if (strcmp(s, fx_op_name((fx_op)op)) == 0) {
            *out = op;
            return 0;
        }
    }
    return -1;
}

static int parse_dtype(const char *s, int *out)
{
    for (int dt = 0; dt < FX_NUM_DATATYPES; dt++) {
        if (strcmp(s, fx_datatype_name((fx_datatype)dt)) == 0) {
            *out = dt;
            return 0;
        }
    }
    return -1;
}

/* Parses one option and its value; -1 with a message on stderr when either is bad. */
static int parse_opt(struct opts *o, const char *opt, const char *val)
{
    unsigned long long b = 0;
    int bad              = 0;

    if (strcmp(opt, "--kernels") == 0) {
        bad = !fx_coll_kset_parse(val, &o->kset);
    } else if (strcmp(opt, "--op") == 0) {
        bad = parse_op(val, &o->op) != 0;
    } else if (strcmp(opt, "--dtype") == 0) {
        bad = parse_dtype(val, &o->dtype) != 0;
    } else if (strcmp(opt, "--reps") == 0) {
        bad = parse_int(val, 1, 1000, &o->reps) != 0;
    } else if (strcmp(opt, "--ms") == 0) {
        bad = parse_int(val, 1, 60000, &o->ms) != 0;
    } else if (strcmp(opt, "--nranks") == 0) {
        bad = parse_int(val, 2, 1 << 30, &o->nranks) != 0;
    } else if (strcmp(opt, "--bytes") == 0) {
        bad      = !fx_config_parse_size(val, &b) || b < 4096 || b > (16ULL << 30);
        o->bytes = (size_t)b;
    } else {
        fprintf(stderr, "fx-kernels: unknown option %s\n", opt);
        return -1;
    }
    if (bad) {
        fprintf(stderr, "fx-kernels: bad value %s for %s\n", val, opt);
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "fx-kernels: %s needs a value\n", argv[i]);
            return -1;
        }
        if (parse_opt(o, argv[i], argv[i + 1]) != 0) {
            return -1;
        }
        i++;
    }
    return 0;
}

/* Values in [1, 2) in every float type (sums and products stay normal), small integers
 * otherwise; a repeated in-place reduction then never meets fp32 subnormals. */
static void fill(fx_datatype dt, void *buf, size_t n, unsigned seed)
{
    size_t es = fx_datatype_size(dt);

    for (size_t i = 0; i < n; i++) {
        float f    = 1.0f + (float)((i * 7 + seed) % 16) / 16.0f;
        uint64_t v = (i * 7 + seed) % 16 + 1;
        double d   = f;

        switch (dt) {
        case FX_FLOAT16:
            v = fx_float_to_half(f);
            break;
        case FX_BFLOAT16:
            v = fx_float_to_bf16(f);
            break;
        case FX_FLOAT8_E4M3:
            v = fx_float_to_e4m3(f);
            break;
        case FX_FLOAT8_E5M2:
            v = fx_float_to_e5m2(f);
            break;
        case FX_FLOAT32:
            memcpy(&v, &f, sizeof(f));
            break;
        case FX_FLOAT64:
            memcpy(&v, &d, sizeof(d));
            break;
        default:
            break;
        }
        memcpy((char *)buf + i * es, &v, es);
    }
}

/* GB/s of calls to the baseline (dt < 0) or to the kernel over --ms milliseconds. */
static double measure(const struct opts *o, int dt, int op, void *a, const void *b)
{
    fx_stream_add_fn base = fx_coll_stream_add();
    size_t n              = dt < 0 ? o->bytes / 4 : o->bytes / fx_datatype_size((fx_datatype)dt);
    double t0             = now_s();
    double t              = t0;
    long calls            = 0;

    while (t - t0 < o->ms * 1e-3) {
        if (dt < 0) {
            base(a, b, n);
        } else {
            fx_coll_reduce_final(a, a, b, n, (fx_datatype)dt, (fx_op)op, o->nranks);
        }
        calls++;
        t = now_s();
    }
    return (double)calls * 3.0 * (double)o->bytes / (t - t0) / 1e9;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;

    return (a > b) - (a < b);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The target ratio for dt, 0 where none is set. */
static double target(int dt)
{
    switch (dt) {
    case FX_FLOAT32:
        return 0.90;
    case FX_FLOAT16:
    case FX_BFLOAT16:
    case FX_FLOAT8_E4M3:
    case FX_FLOAT8_E5M2:
        return 0.70;
    default:
        return 0;
    }
}

/* The arrays: fp32 ones for the baseline, the kernel's own for the datatype measured. */
struct arrays {
    void *base_a;
    void *base_b;
    void *a;
    void *b;
};

static void run_one(const struct opts *o, int dt, int op, const struct arrays *m, double *bv,
                    double *kv)
{
    double mb, mk, want = target(dt);

    fill((fx_datatype)dt, m->a, o->bytes / fx_datatype_size((fx_datatype)dt), 1);
    fill((fx_datatype)dt, m->b, o->bytes / fx_datatype_size((fx_datatype)dt), 5);
    for (int r = 0; r < o->reps; r++) {
        bv[r] = measure(o, -1, op, m->base_a, m->base_b);
        kv[r] = measure(o, dt, op, m->a, m->b);
    }
    mb = median(bv, o->reps);
    mk = median(kv, o->reps);
    printf("%-9s %-5s %10.2f %10.2f %7.3f", fx_datatype_name((fx_datatype)dt),
           fx_op_name((fx_op)op), mk, mb, mk / mb);
    if (want > 0) {
        printf("   >= %.2f %s", want, mk / mb >= want ? "met" : "MISSED");
    }
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct opts o = {FX_KSET_AUTO, FX_SUM, -1, 5, 200, 0, 4};
    char err[256] = "";
    size_t llc    = llc_bytes();
    struct arrays m;
    double *bv, *kv;

    if (parse_args(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    if (fx_coll_kernels_select(o.kset, err, sizeof(err)) != FX_OK) {
        fprintf(stderr, "fx-kernels: %s\n", err);
        return 1;
    }
    if (o.bytes == 0) {
        o.bytes = llc > (64u << 20) ? llc : 64u << 20;
    }
    o.bytes &= ~(size_t)63;
    m.base_a = aligned_alloc(64, o.bytes);
    m.base_b = aligned_alloc(64, o.bytes);
    m.a      = aligned_alloc(64, o.bytes);
    m.b      = aligned_alloc(64, o.bytes);
    bv       = calloc((size_t)o.reps, sizeof(*bv));
    kv       = calloc((size_t)o.reps, sizeof(*kv));
    if (m.base_a == NULL || m.base_b == NULL || m.a == NULL || m.b == NULL || bv == NULL ||
        kv == NULL) {
        fprintf(stderr, "fx-kernels: cannot allocate 4 arrays of %zu bytes\n", o.bytes);
        return 1;
    }
    fill(FX_FLOAT32, m.base_a, o.bytes / 4, 1);
    fill(FX_FLOAT32, m.base_b, o.bytes / 4, 5);
    printf("# kernels %s; arrays %zu MiB (last-level cache %zu KiB); %d reps x %d ms; avg over %d "
           "ranks\n",
           fx_coll_kernel_isa(), o.bytes >> 20, llc >> 10, o.reps, o.ms, o.nranks);
    printf("# GB/s = 3 x array bytes (dst, a, b) per call; baseline: fp32 a[i] += b[i], %s\n",
           fx_coll_kernel_isa());
    printf("%-9s %-5s %10s %10s %7s\n", "dtype", "op", "kernel", "baseline", "ratio");
    for (int dt = 0; dt < FX_NUM_DATATYPES; dt++) {
        for (int op = 0; op < FX_NUM_OPS; op++) {
            if ((o.dtype < 0 || o.dtype == dt) && (o.op < 0 || o.op == op)) {
                run_one(&o, dt, op, &m, bv, kv);
            }
        }
    }
    free(kv);
    free(bv);
    free(m.b);
    free(m.a);
    free(m.base_b);
    free(m.base_a);
    return 0;
}
