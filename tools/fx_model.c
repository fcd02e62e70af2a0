/*
 * fx-model: the tuner's view of a collective, offline. For a rank count, a cost model
 * (latency, link bandwidth, reduction speed: what FX_DEBUG=INFO logs at init as "cost model",
 * or FX_TUNE_* values) and a range of sizes, prints the model's time for every algorithm that
 * can run each size and the one the tuner picks. scripts/bench-algos.sh sets these predictions
 * beside measured times. --hosts H spreads the ranks over H hosts (default 1), as the tuner's
 * near-tie rule across hosts needs (docs/collectives.md).
 *
 *   fx-model COLLECTIVE --np N --latency-us A --gbps B --reduce-gbps G [-b min] [-e max]
 *            [-f factor] [-d dtype] [--slots S] [--slot-bytes SIZE] [--hosts H]
 *
 * Output: CSV "collective,nranks,size,algo,predicted_us,chosen", sizes as fx-bench reports
 * them (all-gather, reduce-scatter, all-to-all: nranks blocks).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "collectives/coll_tune.h"
#include "libfabricx/fx_config.h"

static int parse_double(const char *s, double *out)
{
    char *end = NULL;

    errno = 0;
    *out  = strtod(s, &end);
    return errno != 0 || end == s || *end != '\0' || !(*out >= 0) ? -1 : 0;
}

/* Sizes as FX_CHUNK_BYTES takes them: "512K", "4M", "1G", "100" (binary suffixes). */
static int parse_size(const char *s, size_t *out)
{
    unsigned long long v;

    if (!fx_config_parse_size(s, &v) || v > SIZE_MAX) {
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: fx-model COLLECTIVE --np N --latency-us A --gbps B --reduce-gbps G\n"
               "                [-b min] [-e max] [-f factor] [-d dtype] [--slots S]\n"
               "                [--slot-bytes SIZE] [--hosts H]\n"
               "  COLLECTIVE  allreduce allgather reducescatter broadcast reduce alltoall barrier\n"
               "  --gbps and --reduce-gbps in GB/s (1e9 bytes/s); sizes as fx-bench's;\n"
               "  --hosts: the hosts the ranks sit on, 1 to N (default 1)\n");
}

struct args {
    int coll;
    int np;
    int hosts;
    struct fx_cost_params p;
    size_t minb, maxb;
    double factor;
    fx_datatype dtype;
    unsigned slots;
    size_t slot_bytes;
};

static int parse(int argc, char **argv, struct args *a)
{
    double lat = -1, gbps = -1, rgbps = -1;

    *a = (struct args){.hosts      = 1,
                       .minb       = 8,
                       .maxb       = 128u << 20,
                       .factor     = 2,
                       .dtype      = FX_FLOAT32,
                       .slots      = 8,
                       .slot_bytes = 512u << 10};
    if (argc < 2) {
        usage(stderr);
        return -1;
    }
    for (int c = 1; c < FX_COLL_END; c++) {
        if (c != FX_COLL_SENDRECV && strcmp(argv[1], fx_coll_name(c)) == 0) {
            a->coll = c;
        }
    }
    if (a->coll == 0) {
        fprintf(stderr, "fx-model: unknown collective '%s'\n", argv[1]);
        return -1;
    }
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad       = v == NULL;

        if (!bad && strcmp(o, "--np") == 0) {
            a->np = atoi(v);
            bad   = a->np < 1 || a->np > 1 << 20;
        } else if (!bad && strcmp(o, "--hosts") == 0) {
            a->hosts = atoi(v);
            bad      = a->hosts < 1 || a->hosts > 1 << 20;
        } else if (!bad && strcmp(o, "--latency-us") == 0) {
            bad = parse_double(v, &lat);
        } else if (!bad && strcmp(o, "--gbps") == 0) {
            bad = parse_double(v, &gbps) || gbps == 0;
        } else if (!bad && strcmp(o, "--reduce-gbps") == 0) {
            bad = parse_double(v, &rgbps) || rgbps == 0;
        } else if (!bad && strcmp(o, "-b") == 0) {
            bad = parse_size(v, &a->minb);
        } else if (!bad && strcmp(o, "-e") == 0) {
            bad = parse_size(v, &a->maxb);
        } else if (!bad && strcmp(o, "-f") == 0) {
            bad = parse_double(v, &a->factor) || a->factor <= 1;
        } else if (!bad && strcmp(o, "--slots") == 0) {
            a->slots = (unsigned)atoi(v);
            bad      = a->slots < 1;
        } else if (!bad && strcmp(o, "--slot-bytes") == 0) {
            bad = parse_size(v, &a->slot_bytes) || a->slot_bytes == 0;
        } else if (!bad && strcmp(o, "-d") == 0) {
            bad = 1;
            for (int d = 0; d < FX_NUM_DATATYPES; d++) {
                if (strcasecmp(v, fx_datatype_name((fx_datatype)d)) == 0) {
                    a->dtype = (fx_datatype)d;
                    bad      = 0;
                }
            }
        } else {
            fprintf(stderr, "fx-model: unknown option %s\n", o);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "fx-model: invalid value '%s' for %s\n", v ? v : "", o);
            return -1;
        }
        i++;
    }
    if (a->np == 0 || lat < 0 || gbps < 0 || rgbps < 0) {
        fprintf(stderr, "fx-model: --np, --latency-us, --gbps and --reduce-gbps are needed\n");
        return -1;
    }
    if (a->hosts > a->np) {
        fprintf(stderr, "fx-model: --hosts %d is more than the %d ranks of --np\n", a->hosts,
                a->np);
        return -1;
    }
    a->p = (struct fx_cost_params){lat * 1e-6, 1.0 / (gbps * 1e9), 1.0 / (rgbps * 1e9)};
    return 0;
}

int main(int argc, char **argv)
{
    struct args a;
    size_t es;
    int blocks;

    if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (parse(argc, argv, &a) != 0) {
        return 2;
    }
    es = fx_datatype_size(a.dtype);
    blocks =
        a.coll == FX_COLL_ALLGATHER || a.coll == FX_COLL_REDUCESCATTER || a.coll == FX_COLL_ALLTOALL
            ? a.np
            : 1;
    printf("collective,nranks,size,algo,predicted_us,chosen\n");
    for (size_t size = a.minb; size <= a.maxb;) {
        struct fx_tune_case c = {.coll        = a.coll,
                                 .nranks      = a.np,
                                 .count       = size / es / (size_t)blocks,
                                 .elem_size   = es,
                                 .nslots      = a.slots,
                                 .slot_bytes  = a.slot_bytes,
                                 .params      = &a.p,
                                 .spans_hosts = a.hosts > 1};
        struct fx_tune_choice ch;
        struct fx_cost cost;
        size_t next = (size_t)((double)size * a.factor);

        fx_coll_choose(&c, &ch);
        for (int algo = 1; algo < FX_ALGO_END; algo++) {
            if (fx_coll_can_run(&c, algo) && fx_coll_predict(&c, algo, 0, &cost) == FX_OK) {
                printf("%s,%d,%zu,%s,%.3f,%d\n", fx_coll_name(a.coll), a.np,
                       c.count * es * (size_t)blocks, fx_coll_algo_name(algo), cost.time_s * 1e6,
                       algo == ch.algo);
            }
        }
        size = next > size ? next : size + 1;
    }
    return 0;
}
