/*
 * fx-doctor: measures every host's NIC against every other host and names what is slow.
 *
 *   fx-doctor [--np N] [--quick] [--time SEC] [--size BYTES] [--ring-size BYTES] [--json]
 *             [--timeout-ms MS]
 *
 * Launched like fx-bench: under a launcher's environment (fx_comm_init_env: FX_UNIQUE_ID,
 * torchrun's variables, scripts/netns-run.sh) or with --np N local ranks. One rank per host
 * (the lowest) speaks for the host; with a single host every rank does, and the paths between
 * ranks are what is measured. Steps:
 *   1. every pair of hosts, in a round-robin schedule (rounds of disjoint pairs, so a host is
 *      in one test at a time): both directions at once, then each direction alone (the
 *      receiver times it), then a small-message ping-pong for the latency;
 *   2. a ring all-reduce across every rank, against the rate the pairs predict for its
 *      slowest link;
 *   3. the analysis (libfabricx/fx_slow.h: median and median absolute deviation of the
 *      one-way rates, no fixed threshold) names a host whose every path is slow, or a path
 *      between two hosts that is slow while both are fine elsewhere, or nothing.
 * Rank 0 prints the report (or, with --json, one JSON object). Exit status: 0 healthy, 1 a
 * finding, 2 an error (the message names the rank and what failed). Tree all-reduce is not
 * measured: this version of the library has only the ring.
 */
#include <ifaddrs.h>
#include <math.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fabricx.h"
#include "tool_launch.h"
#include "libfabricx/fx_slow.h"

#define MAX_ENDPOINTS 64
#define IDENT_LEN     512
#define ADDR_LEN      48
#define PINGS         21
#define MAX_FINDINGS  16

struct opts {
    int np;
    bool quick;
    bool json;
    double time_s;    /* per measurement */
    size_t size;      /* pairwise message bytes */
    size_t ring_size; /* all-reduce bytes */
    long timeout_ms;
};

/* Per endpoint pair, as measured by the endpoint that owns the row (indexed by the other). */
struct pair_result {
    double both_gbps;   /* received from the partner while both directions ran */
    double oneway_gbps; /* received from the partner while it alone sent */
    double lat_us;      /* half the median round trip of a small message */
};

struct doctor {
    struct opts o;
    fx_comm_t comm;
    int rank;
    int nranks;
    char (*ident)[IDENT_LEN]; /* [nranks]: "host\tif=addr,if=addr" */
    int nend;                 /* endpoints */
    int ep_rank[MAX_ENDPOINTS];
    int my_ep;                             /* -1: not an endpoint */
    bool per_rank;                         /* one host: every rank is an endpoint */
    struct pair_result *mine;              /* [nend] */
    struct pair_result *all;               /* [nend][nend], rank 0: row = receiver */
    char (*seen)[MAX_ENDPOINTS][ADDR_LEN]; /* [nranks][nend]: address each rank saw */
    uint8_t *sbuf;
    uint8_t *rbuf;
    double ring_busbw;   /* GB/s */
    double ring_predict; /* GB/s from the pairs */
    int ring_bottleneck[2];
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ options */

static void usage(FILE *f)
{
    fprintf(f, "usage: fx-doctor [options]\n"
               "  --np N             start N local ranks (else: the launcher's environment)\n"
               "  --quick            shorter measurements (about 0.15 s each)\n"
               "  --time SEC         seconds per measurement (default 0.5)\n"
               "  --size BYTES       pairwise message size (default 1M; K/M suffixes)\n"
               "  --ring-size BYTES  ring all-reduce size (default 16M)\n"
               "  --json             print one JSON object instead of the report\n"
               "  --timeout-ms MS    kill the local ranks after MS (default 300000)\n"
               "Exit status: 0 healthy, 1 something slow was found, 2 error.\n");
}

static int parse_size(const char *s, size_t *out)
{
    char *end = NULL;
    double v  = strtod(s, &end);

    if (end == s || v < 1 || !isfinite(v)) {
        return -1;
    }
    if (*end == 'K' || *end == 'k') {
        v *= 1024, end++;
    } else if (*end == 'M' || *end == 'm') {
        v *= 1048576, end++;
    } else if (*end == 'G' || *end == 'g') {
        v *= 1073741824.0, end++;
    }
    if (*end != '\0' || v > 1073741824.0) {
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static int parse_args(struct opts *o, int argc, char **argv)
{
    *o = (struct opts){.time_s = 0.5, .size = 1 << 20, .ring_size = 16 << 20, .timeout_ms = 300000};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end     = NULL;

        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--quick")) {
            o->quick = true;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (v == NULL) {
            fprintf(stderr, "fx-doctor: unknown option or missing value: %s\n", a);
            usage(stderr);
            return -1;
        } else if (!strcmp(a, "--np")) {
            long n = strtol(v, &end, 10);
            if (*end != '\0' || n < 1 || n > 1024) {
                fprintf(stderr, "fx-doctor: --np %s: give 1 to 1024\n", v);
                return -1;
            }
            o->np = (int)n, i++;
        } else if (!strcmp(a, "--time")) {
            o->time_s = strtod(v, &end);
            if (*end != '\0' || !(o->time_s >= 0.01 && o->time_s <= 60)) {
                fprintf(stderr, "fx-doctor: --time %s: give 0.01 to 60 seconds\n", v);
                return -1;
            }
            i++;
        } else if (!strcmp(a, "--size") || !strcmp(a, "--ring-size")) {
            size_t *dst = a[2] == 's' ? &o->size : &o->ring_size;
            if (parse_size(v, dst) != 0 || *dst < 4) {
                fprintf(stderr, "fx-doctor: %s %s: give a size from 4 bytes to 1G\n", a, v);
                return -1;
            }
            i++;
        } else if (!strcmp(a, "--timeout-ms")) {
            long n = strtol(v, &end, 10);
            if (*end != '\0' || n < 1000) {
                fprintf(stderr, "fx-doctor: --timeout-ms %s: give 1000 or more\n", v);
                return -1;
            }
            o->timeout_ms = n, i++;
        } else {
            fprintf(stderr, "fx-doctor: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }
    }
    if (o->quick) {
        o->time_s    = o->time_s < 0.15 ? o->time_s : 0.15;
        o->size      = o->size < (256u << 10) ? o->size : 256u << 10;
        o->ring_size = o->ring_size < (4u << 20) ? o->ring_size : 4u << 20;
    }
    o->ring_size &= ~(size_t)3;
    return 0;
}

/* ------------------------------------------------------------------ errors */

static int fail(const struct doctor *d, const char *what, fx_status s)
{
    char why[512] = "";

    if (d->comm != NULL) {
        fx_comm_get_error(d->comm, why, sizeof(why));
    }
    fprintf(stderr, "fx-doctor: rank %d: %s: %s%s%s\n", d->rank, what, fx_strerror(s),
            why[0] ? ": " : "", why);
    return 2;
}

#define CHECK(d, what, call)                                                                       \
    do {                                                                                           \
        fx_status s_ = (call);                                                                     \
        if (s_ != FX_OK) {                                                                         \
            return fail((d), (what), s_);                                                          \
        }                                                                                          \
    } while (0)

static fx_status barrier(struct doctor *d)
{
    float x = 0;

    return fx_allreduce(&x, &x, 1, FX_FLOAT32, FX_SUM, d->comm);
}

/* ------------------------------------------------------------------ identity */

/* "host\tif=addr,if=addr" for this rank: the host name and every non-loopback IPv4/IPv6 address. */
static void make_ident(char *out)
{
    struct ifaddrs *ifs = NULL;
    size_t off;

    if (gethostname(out, 64) != 0) {
        snprintf(out, 64, "unknown");
    }
    out[63] = '\0';
    off     = strlen(out);
    off += (size_t)snprintf(out + off, IDENT_LEN - off, "\t");
    if (getifaddrs(&ifs) != 0) {
        return;
    }
    for (struct ifaddrs *i = ifs; i != NULL && off < IDENT_LEN - 80; i = i->ifa_next) {
        char host[NI_MAXHOST];
        socklen_t len;

        if (i->ifa_addr == NULL ||
            (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6) ||
            strcmp(i->ifa_name, "lo") == 0) {
            continue;
        }
        len = i->ifa_addr->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                : sizeof(struct sockaddr_in6);
        if (getnameinfo(i->ifa_addr, len, host, sizeof(host), NULL, 0, NI_NUMERICHOST) != 0) {
            continue;
        }
        off += (size_t)snprintf(out + off, IDENT_LEN - off, "%s%s=%s",
                                out[off - 1] == '\t' ? "" : ",", i->ifa_name, host);
    }
    freeifaddrs(ifs);
}

static void ident_host(const char *ident, char *host, size_t len)
{
    size_t n = strcspn(ident, "\t");

    snprintf(host, len, "%.*s", (int)n, ident);
}

/* The interface of ident that has address addr; "" when none. */
static void ident_iface(const char *ident, const char *addr, char *out, size_t len)
{
    const char *p = strchr(ident, '\t');

    out[0] = '\0';
    while (p != NULL && *++p != '\0') {
        size_t n      = strcspn(p, ",");
        const char *e = memchr(p, '=', n);

        if (e != NULL && strlen(addr) == n - (size_t)(e + 1 - p) &&
            strncmp(e + 1, addr, strlen(addr)) == 0) {
            snprintf(out, len, "%.*s", (int)(e - p), p);
            return;
        }
        p = strchr(p, ',');
    }
}

/* Gathers every rank's identity; picks the endpoints (the lowest rank of each host, or every
 * rank when all share one host). */
static int find_endpoints(struct doctor *d)
{
    char me[IDENT_LEN] = {0};
    char hosts[MAX_ENDPOINTS][64];
    int nhosts = 0;

    make_ident(me);
    CHECK(d, "exchanging host names", fx_allgather(me, d->ident, IDENT_LEN, FX_UINT8, d->comm));
    for (int r = 0; r < d->nranks; r++) {
        char h[64];
        int k = 0;

        ident_host(d->ident[r], h, sizeof(h));
        while (k < nhosts && strcmp(hosts[k], h) != 0) {
            k++;
        }
        if (k == nhosts) {
            if (nhosts == MAX_ENDPOINTS) {
                fprintf(stderr, "fx-doctor: more than %d hosts\n", MAX_ENDPOINTS);
                return 2;
            }
            snprintf(hosts[nhosts], sizeof(hosts[nhosts]), "%s", h);
            d->ep_rank[nhosts++] = r;
        }
    }
    if (nhosts == 1) { /* one host: every rank is an endpoint (at most MAX_ENDPOINTS) */
        d->per_rank = true;
        nhosts      = d->nranks < MAX_ENDPOINTS ? d->nranks : MAX_ENDPOINTS;
        for (int r = 0; r < nhosts; r++) {
            d->ep_rank[r] = r;
        }
    }
    d->nend  = nhosts;
    d->my_ep = -1;
    for (int e = 0; e < d->nend; e++) {
        if (d->ep_rank[e] == d->rank) {
            d->my_ep = e;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ pairwise tests */

/* Partner of endpoint e in round r of the circle schedule over m (even) slots; -1: a bye. */
static int partner(int e, int r, int m, int nend)
{
    int p;

    if (e == m - 1) {
        p = r;
    } else if (e == r) {
        p = m - 1;
    } else {
        p = (2 * r - e + (m - 1)) % (m - 1);
    }
    return p < nend ? p : -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;

    return (x > y) - (x < y);
}

/* One pair test with partner p (rank pr); first is the lower endpoint of the two. */
static int pair_test(struct doctor *d, int p, bool first)
{
    int pr           = d->ep_rank[p];
    size_t n         = d->o.size;
    int64_t k[2]     = {0, 0};
    uint8_t token[2] = {0, 0};
    double rtt[PINGS];
    double t;
    int64_t iters;

    /* Probe: the first exchange opens the connection, the next two set how many messages fill
     * the measurement time. */
    CHECK(d, "pair probe", fx_sendrecv(d->sbuf, n, pr, d->rbuf, n, pr, FX_UINT8, d->comm));
    t = now_s();
    for (int i = 0; i < 2; i++) {
        CHECK(d, "pair probe", fx_sendrecv(d->sbuf, n, pr, d->rbuf, n, pr, FX_UINT8, d->comm));
    }
    t    = (now_s() - t) / 2;
    k[0] = (int64_t)(d->o.time_s / (t > 1e-6 ? t : 1e-6));
    k[0] = k[0] < 2 ? 2 : k[0] > 100000 ? 100000 : k[0];
    CHECK(d, "pair agreement", fx_sendrecv(&k[0], 1, pr, &k[1], 1, pr, FX_INT64, d->comm));
    iters = k[0] > k[1] ? k[0] : k[1];

    /* Both directions at once. */
    t = now_s();
    for (int64_t i = 0; i < iters; i++) {
        CHECK(d, "pair test (both directions)",
              fx_sendrecv(d->sbuf, n, pr, d->rbuf, n, pr, FX_UINT8, d->comm));
    }
    d->mine[p].both_gbps = (double)iters * (double)n * 8e-9 / (now_s() - t);

    /* Each direction alone, timed by the receiver: the lower endpoint sends first. */
    for (int dir = 0; dir < 2; dir++) {
        bool sender = (dir == 0) == first;

        CHECK(d, "pair sync", fx_sendrecv(&token[0], 1, pr, &token[1], 1, pr, FX_UINT8, d->comm));
        t = now_s();
        for (int64_t i = 0; i < iters; i++) {
            CHECK(d, sender ? "pair test (sending)" : "pair test (receiving)",
                  sender ? fx_send(d->sbuf, n, FX_UINT8, pr, d->comm)
                         : fx_recv(d->rbuf, n, FX_UINT8, pr, d->comm));
        }
        if (!sender) {
            d->mine[p].oneway_gbps = (double)iters * (double)n * 8e-9 / (now_s() - t);
        }
    }

    /* Latency: PINGS round trips of 8 bytes, the lower endpoint starting each. */
    for (int i = 0; i < PINGS; i++) {
        t = now_s();
        if (first) {
            CHECK(d, "ping", fx_send(d->sbuf, 8, FX_UINT8, pr, d->comm));
            CHECK(d, "pong", fx_recv(d->rbuf, 8, FX_UINT8, pr, d->comm));
        } else {
            CHECK(d, "ping", fx_recv(d->rbuf, 8, FX_UINT8, pr, d->comm));
            CHECK(d, "pong", fx_send(d->sbuf, 8, FX_UINT8, pr, d->comm));
        }
        rtt[i] = now_s() - t;
    }
    qsort(rtt, PINGS, sizeof(rtt[0]), cmp_double);
    d->mine[p].lat_us = rtt[PINGS / 2] * 1e6 / 2;
    return 0;
}

static void progress(const struct doctor *d, int done, int total, const char *what)
{
    int width = 30;
    int fill  = total > 0 ? done * width / total : width;

    if (d->rank != 0 || !isatty(STDERR_FILENO)) {
        return;
    }
    fprintf(stderr, "\r[%.*s%*s] %d/%d %-28s", fill, "##############################", width - fill,
            "", done, total, what);
    if (done == total) {
        fprintf(stderr, "\r%*s\r", width + 50, "");
    }
    fflush(stderr);
}

static int pairwise(struct doctor *d)
{
    int m      = d->nend + (d->nend % 2);
    int rounds = m - 1;
    double *row;
    double *rows;
    size_t per = (size_t)d->nend * 3;

    for (int r = 0; r < rounds; r++) {
        int p = d->my_ep >= 0 ? partner(d->my_ep, r, m, d->nend) : -1;
        int rc;

        progress(d, r, rounds + 1, "pairs of hosts");
        CHECK(d, "barrier before a round", barrier(d));
        if (p >= 0 && (rc = pair_test(d, p, d->my_ep < p)) != 0) {
            return rc;
        }
    }
    CHECK(d, "barrier after the pairs", barrier(d));
    row  = calloc(per, sizeof(double));
    rows = calloc(per * (size_t)d->nranks, sizeof(double));
    if (row == NULL || rows == NULL) {
        free(row);
        free(rows);
        fprintf(stderr, "fx-doctor: out of memory\n");
        return 2;
    }
    for (int e = 0; e < d->nend && d->my_ep >= 0; e++) {
        row[3 * e]     = d->mine[e].both_gbps;
        row[3 * e + 1] = d->mine[e].oneway_gbps;
        row[3 * e + 2] = d->mine[e].lat_us;
    }
    if (fx_allgather(row, rows, per, FX_FLOAT64, d->comm) != FX_OK) {
        free(row);
        free(rows);
        return fail(d, "gathering the pair results", FX_ERR_INTERNAL);
    }
    for (int e = 0; e < d->nend; e++) {
        const double *src = rows + per * (size_t)d->ep_rank[e];

        for (int j = 0; j < d->nend; j++) {
            d->all[e * d->nend + j] =
                (struct pair_result){src[3 * j], src[3 * j + 1], src[3 * j + 2]};
        }
    }
    free(row);
    free(rows);
    return 0;
}

/* The address every rank reached each endpoint at (fx_comm_stats), gathered to all. */
static int gather_addresses(struct doctor *d)
{
    char(*mine)[ADDR_LEN] = calloc(MAX_ENDPOINTS, ADDR_LEN);
    fx_link_stats *st     = calloc((size_t)d->nranks, sizeof(*st));
    int n                 = 0;
    fx_status s           = FX_ERR_NO_MEMORY;

    if (mine != NULL && st != NULL) {
        s = fx_comm_stats(d->comm, st, d->nranks, &n);
    }
    for (int k = 0; k < n && s == FX_OK; k++) {
        for (int e = 0; e < d->nend; e++) {
            if (d->ep_rank[e] == st[k].peer) {
                snprintf(mine[e], ADDR_LEN, "%s", st[k].address);
            }
        }
    }
    if (s == FX_OK) {
        s = fx_allgather(mine, d->seen, (size_t)MAX_ENDPOINTS * ADDR_LEN, FX_UINT8, d->comm);
    }
    free(mine);
    free(st);
    return s == FX_OK ? 0 : fail(d, "gathering addresses", s);
}

/* ------------------------------------------------------------------ ring all-reduce */

static int ring(struct doctor *d)
{
    size_t count = d->o.ring_size / 4;
    double times[3];

    progress(d, d->nend, d->nend + 1, "ring all-reduce");
    CHECK(d, "ring all-reduce (warm-up)",
          fx_allreduce(d->sbuf, d->rbuf, count, FX_FLOAT32, FX_SUM, d->comm));
    for (int i = 0; i < 3; i++) {
        double t;

        CHECK(d, "barrier", barrier(d));
        t = now_s();
        CHECK(d, "ring all-reduce",
              fx_allreduce(d->sbuf, d->rbuf, count, FX_FLOAT32, FX_SUM, d->comm));
        times[i] = now_s() - t;
        CHECK(d, "ring all-reduce time",
              fx_allreduce(&times[i], &times[i], 1, FX_FLOAT64, FX_MAX, d->comm));
    }
    qsort(times, 3, sizeof(times[0]), cmp_double);
    d->ring_busbw = d->nranks > 1
                        ? (double)(count * 4) * 2.0 * (d->nranks - 1) / d->nranks / times[1] * 1e-9
                        : 0;
    /* The ring visits the endpoints in rank order; its slowest link bounds it. */
    d->ring_predict = 0;
    for (int e = 0; e < d->nend && d->nend > 1; e++) {
        int nx      = (e + 1) % d->nend;
        double rate = d->all[nx * d->nend + e].both_gbps / 8; /* GB/s, received by nx from e */

        if (d->ring_predict == 0 || rate < d->ring_predict) {
            d->ring_predict       = rate;
            d->ring_bottleneck[0] = e;
            d->ring_bottleneck[1] = nx;
        }
    }
    progress(d, d->nend + 1, d->nend + 1, "");
    return 0;
}

/* ------------------------------------------------------------------ report */

struct verdict {
    struct fx_slow_finding f[MAX_FINDINGS];
    int n;
    struct fx_slow_result res;
};

static void analyse(const struct doctor *d, struct verdict *v)
{
    struct fx_slow_link *links = calloc((size_t)d->nend * (size_t)d->nend, sizeof(*links));
    size_t n                   = 0;

    v->n = 0;
    memset(&v->res, 0, sizeof(v->res));
    if (links == NULL) {
        return;
    }
    for (int dst = 0; dst < d->nend; dst++) {
        for (int src = 0; src < d->nend; src++) {
            if (src != dst) {
                links[n++] = (struct fx_slow_link){
                    .src = src, .dst = dst, .rate = d->all[dst * d->nend + src].oneway_gbps};
            }
        }
    }
    v->n = fx_slow_analyze(links, n, d->nend, NULL, v->f, MAX_FINDINGS, &v->res);
    v->n = v->n < 0 ? 0 : v->n > MAX_FINDINGS ? MAX_FINDINGS : v->n;
    free(links);
}

/* Endpoint e's address as the others reached it, and its interface. */
static void ep_addr(const struct doctor *d, int e, char *addr, char *ifname)
{
    addr[0] = ifname[0] = '\0';
    for (int r = 0; r < d->nranks && addr[0] == '\0'; r++) {
        if (r != d->ep_rank[e] && d->seen[r][e][0] != '\0') {
            snprintf(addr, ADDR_LEN, "%s", d->seen[r][e]);
        }
    }
    if (addr[0] != '\0') {
        ident_iface(d->ident[d->ep_rank[e]], addr, ifname, 32);
    }
}

/* The endpoint's host, or "rank N" when every rank of one host is an endpoint. */
static void ep_name(const struct doctor *d, int e, char *out, size_t len)
{
    if (d->per_rank) {
        snprintf(out, len, "rank %d", d->ep_rank[e]);
    } else {
        ident_host(d->ident[d->ep_rank[e]], out, len);
    }
}

/* Ranks of endpoint e's host: "2" or "2,3" (every rank when the endpoints are ranks). */
static void ep_ranks(const struct doctor *d, int e, char *out, size_t len, bool json)
{
    char h[64];
    size_t off = 0;

    ep_name(d, e, h, sizeof(h));
    out[0] = '\0';
    for (int r = 0; r < d->nranks && off < len; r++) {
        char hr[64];

        ident_host(d->ident[r], hr, sizeof(hr));
        if (d->per_rank ? r == d->ep_rank[e] : strcmp(hr, h) == 0) {
            off +=
                (size_t)snprintf(out + off, len - off, "%s%d", off ? (json ? ", " : ",") : "", r);
        }
    }
}

/* A ring all-reduce moves at its slowest link's rate: one through a slow host or path runs
 * expected / measured times longer. */
static double ring_slowdown(double measured_gbps, double expected_gbps)
{
    return measured_gbps > 0 ? expected_gbps / measured_gbps : 0;
}

static void print_report(const struct doctor *d, const struct verdict *v)
{
    char name[64];

    printf("fx-doctor: %d rank%s, %d %s; %d-byte messages, %.2f s per measurement\n", d->nranks,
           d->nranks == 1 ? "" : "s", d->nend,
           d->per_rank ? "endpoints (one host: every rank)" : "hosts", (int)d->o.size, d->o.time_s);
    printf("\none-way rate, Gbit/s (row: sender, column: receiver):\n%14s", "");
    for (int j = 0; j < d->nend; j++) {
        ep_name(d, j, name, sizeof(name));
        printf(" %9.9s", name);
    }
    printf("\n");
    for (int i = 0; i < d->nend; i++) {
        ep_name(d, i, name, sizeof(name));
        printf("%14.14s", name);
        for (int j = 0; j < d->nend; j++) {
            if (i == j) {
                printf(" %9s", "-");
            } else {
                printf(" %9.3f", d->all[j * d->nend + i].oneway_gbps);
            }
        }
        printf("\n");
    }
    printf("\nboth directions at once, Gbit/s received; latency, us (half a round trip):\n");
    for (int i = 0; i < d->nend; i++) {
        for (int j = i + 1; j < d->nend; j++) {
            char a[64], b[64];

            ep_name(d, i, a, sizeof(a));
            ep_name(d, j, b, sizeof(b));
            printf("  %s <-> %s: %.3f / %.3f Gbit/s, %.1f us\n", a, b,
                   d->all[j * d->nend + i].both_gbps, d->all[i * d->nend + j].both_gbps,
                   d->all[i * d->nend + j].lat_us);
        }
    }
    if (d->nend > 1) {
        char a[64], b[64];

        ep_name(d, d->ring_bottleneck[0], a, sizeof(a));
        ep_name(d, d->ring_bottleneck[1], b, sizeof(b));
        printf("\nring all-reduce of %zu bytes over %d ranks: busbw %.3f GB/s; the pairs predict "
               "%.3f GB/s (its slowest link %s -> %s): %.2f of the prediction\n",
               d->o.ring_size, d->nranks, d->ring_busbw, d->ring_predict, a, b,
               d->ring_predict > 0 ? d->ring_busbw / d->ring_predict : 0);
        printf("tree all-reduce: not measured (this version has the ring only)\n");
    }
    printf("\nexpected one-way rate %.3f Gbit/s (median of the faster half of %d links; spread "
           "%.3f); links below %.3f are slow\n",
           v->res.expected, v->res.nlinks, v->res.spread, v->res.threshold);
    if (v->n == 0) {
        printf("verdict: healthy: no slow host or path\n");
        return;
    }
    for (int k = 0; k < v->n; k++) {
        const struct fx_slow_finding *f = &v->f[k];
        char addr[ADDR_LEN], ifn[32], ranks[128];

        if (f->kind == FX_SLOW_HOST) {
            ep_name(d, f->host, name, sizeof(name));
            ep_addr(d, f->host, addr, ifn);
            ep_ranks(d, f->host, ranks, sizeof(ranks), false);
            printf("SLOW HOST %s (rank %s, %s%s%s%s): %d of its %d links slow, %.3f Gbit/s "
                   "measured, %.3f expected; slows a ring all-reduce through it %.1fx\n",
                   name, ranks, addr[0] ? addr : "address unknown", ifn[0] ? ", " : "", ifn,
                   ifn[0] ? "" : "", f->nslow, f->nlinks, f->measured, v->res.expected,
                   ring_slowdown(f->measured, v->res.expected));
        } else {
            char a[64], b[64], aa[ADDR_LEN], ba[ADDR_LEN], ai[32], bi[32];

            ep_name(d, f->a, a, sizeof(a));
            ep_name(d, f->b, b, sizeof(b));
            ep_addr(d, f->a, aa, ai);
            ep_addr(d, f->b, ba, bi);
            printf("SLOW PATH %s (%s%s%s) %s %s (%s%s%s): %.3f Gbit/s measured, %.3f expected; "
                   "both hosts are fine on their other links; slows a ring all-reduce using it "
                   "%.1fx\n",
                   a, aa[0] ? aa : "?", ai[0] ? " " : "", ai,
                   f->dirs == 3   ? "<->"
                   : f->dirs == 1 ? "->"
                                  : "<-",
                   b, ba[0] ? ba : "?", bi[0] ? " " : "", bi, f->measured, v->res.expected,
                   ring_slowdown(f->measured, v->res.expected));
        }
    }
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            printf("\\%c", *s);
        } else if ((unsigned char)*s < 0x20) {
            printf("\\u%04x", *s);
        } else {
            putchar(*s);
        }
    }
    putchar('"');
}

static void json_endpoint_lists(const struct doctor *d, const int *eps, int n)
{
    char buf[128], addr[ADDR_LEN], ifn[32];

    printf("\"ranks\": [");
    for (int i = 0; i < n; i++) {
        ep_ranks(d, eps[i], buf, sizeof(buf), true);
        printf("%s%s", i ? ", " : "", buf);
    }
    printf("], \"hosts\": [");
    for (int i = 0; i < n; i++) {
        ep_name(d, eps[i], buf, sizeof(buf));
        printf("%s", i ? ", " : "");
        json_str(buf);
    }
    printf("], \"addresses\": [");
    for (int i = 0; i < n; i++) {
        ep_addr(d, eps[i], addr, ifn);
        printf("%s", i ? ", " : "");
        json_str(addr);
    }
    printf("], \"interfaces\": [");
    for (int i = 0; i < n; i++) {
        ep_addr(d, eps[i], addr, ifn);
        printf("%s", i ? ", " : "");
        json_str(ifn);
    }
    printf("]");
}

static void print_json(const struct doctor *d, const struct verdict *v)
{
    char name[64];

    printf("{\"nranks\": %d, \"endpoints\": [", d->nranks);
    for (int e = 0; e < d->nend; e++) {
        ep_name(d, e, name, sizeof(name));
        printf("%s{\"rank\": %d, \"host\": ", e ? ", " : "", d->ep_rank[e]);
        json_str(name);
        printf("}");
    }
    printf("], \"links\": [");
    for (int i = 0, first = 1; i < d->nend; i++) {
        for (int j = 0; j < d->nend; j++) {
            if (i != j) {
                printf("%s{\"src\": %d, \"dst\": %d, \"oneway_gbps\": %.4f, \"both_gbps\": %.4f, "
                       "\"latency_us\": %.2f}",
                       first ? "" : ", ", i, j, d->all[j * d->nend + i].oneway_gbps,
                       d->all[j * d->nend + i].both_gbps, d->all[j * d->nend + i].lat_us);
                first = 0;
            }
        }
    }
    printf(
        "], \"ring_allreduce\": {\"bytes\": %zu, \"busbw_gbs\": %.4f, \"predicted_gbs\": %.4f}, ",
        d->o.ring_size, d->ring_busbw, d->ring_predict);
    printf("\"expected_gbps\": %.4f, \"threshold_gbps\": %.4f, \"findings\": [", v->res.expected,
           v->res.threshold);
    for (int k = 0; k < v->n; k++) {
        const struct fx_slow_finding *f = &v->f[k];
        int eps[2]                      = {f->kind == FX_SLOW_HOST ? f->host : f->a, f->b};

        printf("%s{\"kind\": \"%s\", ", k ? ", " : "", f->kind == FX_SLOW_HOST ? "host" : "path");
        json_endpoint_lists(d, eps, f->kind == FX_SLOW_HOST ? 1 : 2);
        printf(", \"measured_gbps\": %.4f, \"expected_gbps\": %.4f, \"slow_links\": %d, "
               "\"links\": %d, \"ring_allreduce_slowdown\": %.2f}",
               f->measured, v->res.expected, f->nslow, f->nlinks,
               ring_slowdown(f->measured, v->res.expected));
    }
    printf("], \"healthy\": %s}\n", v->n == 0 ? "true" : "false");
}

/* ------------------------------------------------------------------ one rank */

static int run_rank(const struct opts *o, fx_comm_t comm)
{
    struct doctor d = {.o = *o, .comm = comm};
    size_t buf      = o->size > o->ring_size ? o->size : o->ring_size;
    int rc          = 2;

    fx_comm_rank(comm, &d.rank);
    fx_comm_size(comm, &d.nranks);
    d.ident = calloc((size_t)d.nranks, IDENT_LEN);
    d.seen  = calloc((size_t)d.nranks, sizeof(*d.seen));
    d.mine  = calloc(MAX_ENDPOINTS, sizeof(*d.mine));
    d.all   = calloc((size_t)MAX_ENDPOINTS * MAX_ENDPOINTS, sizeof(*d.all));
    d.sbuf  = calloc(buf, 1);
    d.rbuf  = calloc(buf, 1);
    if (d.ident == NULL || d.seen == NULL || d.mine == NULL || d.all == NULL || d.sbuf == NULL ||
        d.rbuf == NULL) {
        fprintf(stderr, "fx-doctor: rank %d: out of memory\n", d.rank);
    } else if (d.nranks < 2) {
        fprintf(stderr, "fx-doctor: one rank has no link to measure; start two or more\n");
    } else if ((rc = find_endpoints(&d)) == 0 && (rc = pairwise(&d)) == 0 &&
               (rc = gather_addresses(&d)) == 0 && (rc = ring(&d)) == 0) {
        struct verdict v;

        analyse(&d, &v);
        if (d.rank == 0) {
            if (o->json) {
                print_json(&d, &v);
            } else {
                print_report(&d, &v);
            }
            fflush(stdout);
        }
        rc = d.rank == 0 && v.n > 0 ? 1 : 0;
    }
    free(d.ident);
    free(d.seen);
    free(d.mine);
    free(d.all);
    free(d.sbuf);
    free(d.rbuf);
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
    return tool_run("fx-doctor", o.np, o.timeout_ms, 2, local_rank, &o);
}
