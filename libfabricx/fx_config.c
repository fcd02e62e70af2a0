/* The FX_* variable table and its parser. */
#include "fx_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fx_log.h"

extern char **environ;

#define ROW(n, t, d, h, field, lo, hi)                                                             \
    {                                                                                              \
        n, t, d, h, offsetof(struct fx_config, field), sizeof(((struct fx_config *)0)->field), lo, \
            hi                                                                                     \
    }
#define DOC(n, d, h)                                                                               \
    {                                                                                              \
        n, FX_CFG_DOC, d, h, 0, 0, 0, 0                                                            \
    }

const struct fx_config_row fx_config_table[] = {
    ROW("FX_TIMEOUT_MS", FX_CFG_INT, "60000",
        "bound on init and on any operation making no progress, in milliseconds", timeout_ms, 100,
        INT_MAX),
    ROW("FX_CHUNK_BYTES", FX_CFG_SIZE, "0",
        "pipeline chunk size (K/M suffixes); 0 chooses per operation size", chunk_bytes, 0,
        1LL << 30),
    ROW("FX_NSOCKS", FX_CFG_INT, "0",
        "TCP sockets per peer connection; 0: 1 to a peer on this host, 2 to others", nsocks, 0, 64),
    ROW("FX_TRANSPORT", FX_CFG_STRING, "",
        "force one transport for every pair (tcp, shm, ucx or verbs if built); unset: shm to ranks "
        "of this "
        "host, tcp "
        "to others",
        transport, 0, 0),
    ROW("FX_SHM_DISABLE", FX_CFG_BOOL, "0",
        "1: no shared memory, ranks of one host talk over the network transport", shm_disable, 0,
        1),
    ROW("FX_SOCKET_IFNAME", FX_CFG_STRING, "",
        "interfaces: name prefixes, ^ to exclude, = for exact names, or a CIDR", socket_ifname, 0,
        0),
    ROW("FX_TCP_ZEROCOPY", FX_CFG_BOOL, "0",
        "send large TCP messages with MSG_ZEROCOPY (pays off on real NICs, not on loopback)",
        tcp_zerocopy, 0, 1),
    ROW("FX_BIND", FX_CFG_BOOL, "0",
        "bind each rank's threads to the NUMA node of its nearest NIC (live host only)", bind, 0,
        1),
    ROW("FX_DEVICE", FX_CFG_STRING, "",
        "this rank's accelerator: an index in PCI order or a PCI bus id, or none; unset: the "
        "launcher's local rank modulo the host's accelerators",
        device, 0, 0),
    ROW("FX_SCRATCH_SLOTS", FX_CFG_INT, "8",
        "receive buffers of one chunk each kept per "
        "communicator for reductions in flight",
        scratch_slots, 1, 256),
    ROW("FX_KERNELS", FX_CFG_STRING, "auto",
        "reduction kernels: auto (the widest the CPU runs), scalar, avx2, avx512 or avx512fp16; a "
        "set the CPU lacks fails init with FX_ERR_UNSUPPORTED",
        kernels, 0, 0),
    ROW("FX_ALGO", FX_CFG_STRING, "",
        "force algorithms per collective, e.g. allreduce:tree,allgather:ring (rank 0's value "
        "holds for the job); unset: the tuner chooses",
        algo, 0, 0),
    ROW("FX_TUNE_LATENCY_NS", FX_CFG_INT, "0",
        "the cost model's latency per message in ns (set it on every rank); 0: measured at init",
        tune_latency_ns, 0, 1000000000),
    ROW("FX_TUNE_LINK_MBPS", FX_CFG_INT, "0",
        "the cost model's link bandwidth in MB/s (set it on every rank); 0: measured at init",
        tune_link_mbps, 0, 100000000),
    ROW("FX_TUNE_REDUCE_MBPS", FX_CFG_INT, "0",
        "the cost model's reduction speed in MB/s (set it on every rank); 0: measured at init",
        tune_reduce_mbps, 0, 100000000),
    ROW("FX_TUNE_CACHE", FX_CFG_STRING, "",
        "directory of the per-host cache of the cost model's measurements; unset: "
        "$XDG_CACHE_HOME/libfabricx or ~/.cache/libfabricx; none: measure at every init",
        tune_cache, 0, 0),
    ROW("FX_SPIN_US", FX_CFG_INT, "50",
        "microseconds a waiting thread polls without any message moving before it sleeps", spin_us,
        0, 1000000),
    ROW("FX_LINK_STATS", FX_CFG_BOOL, "1",
        "0: keep no per-peer link statistics (fx_comm_stats) and run no slow-link monitor",
        link_stats, 0, 1),
    ROW("FX_IB_HCA", FX_CFG_STRING, "",
        "verbs: RDMA devices and ports to use, e.g. mlx5_0:1,mlx5_1:1 (the first usable one); "
        "unset: the NIC nearest to the rank when it is an RDMA device, else the first active port",
        ib_hca, 0, 0),
    ROW("FX_IB_GID_INDEX", FX_CFG_INT, "-1",
        "verbs: the source GID index every QP uses; -1: the GID rdma_cm resolves from each "
        "connection's address (RoCE: its RoCE v2 GID)",
        ib_gid_index, -1, 255),
    ROW("FX_IB_TC", FX_CFG_INT, "-1",
        "verbs: traffic class (IP TOS for RoCE) of the connections; -1: the fabric's default",
        ib_tc, -1, 255),
    ROW("FX_IB_SL", FX_CFG_INT, "0", "verbs: InfiniBand service level of the connections", ib_sl, 0,
        15),
    ROW("FX_IB_QPS_PER_CONN", FX_CFG_INT, "2",
        "verbs: queue pairs per peer connection; large messages are split across them", ib_qps, 1,
        8),
    ROW("FX_REG_CACHE_MAX", FX_CFG_SIZE, "1G",
        "bytes of unused memory registrations a transport that registers memory keeps cached "
        "(ucx, verbs; K/M/G suffixes); 0: register for each operation",
        reg_cache_max, 0, 1LL << 40),
    DOC("FX_DEBUG", "WARN", "log level: NONE, WARN, INFO or TRACE"),
    DOC("FX_DEBUG_SUBSYS", "ALL", "subsystems logged: INIT,BOOT,COLL,NET,ENV (^ to exclude)"),
    DOC("FX_DEBUG_FILE", "", "log to this file instead of stderr (%h host, %p pid)"),
    DOC("FX_UNIQUE_ID", "", "the job's unique id string (fx_comm_init_env)"),
    DOC("FX_RANK", "", "this process's rank (fx_comm_init_env)"),
    DOC("FX_NRANKS", "", "number of ranks (fx_comm_init_env)"),
    DOC("FX_JOB_SECRET", "", "job secret text when the rendezvous is MASTER_ADDR/MASTER_PORT"),
    DOC("FX_JOB_SECRET_FILE", "", "file holding the job secret (instead of FX_JOB_SECRET)"),
    DOC("FX_TOPO_FILE", "", "read the host topology from this hwloc XML file (never used to bind)"),
};
const size_t fx_config_table_len = sizeof(fx_config_table) / sizeof(fx_config_table[0]);

bool fx_config_parse_size(const char *s, unsigned long long *out)
{
    char *end = NULL;
    unsigned long long v;
    unsigned shift = 0;

    if (s == NULL || !isdigit((unsigned char)s[0])) {
        return false;
    }
    errno = 0;
    v     = strtoull(s, &end, 10);
    if (errno != 0) {
        return false;
    }
    switch (toupper((unsigned char)*end)) {
    case 'K':
        shift = 10;
        end++;
        break;
    case 'M':
        shift = 20;
        end++;
        break;
    case 'G':
        shift = 30;
        end++;
        break;
    default:
        break;
    }
    if (*end == 'i' || *end == 'B') {
        end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
    }
    if (*end != '\0' || (shift > 0 && v > (ULLONG_MAX >> shift))) {
        return false;
    }
    *out = v << shift;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    if (strcmp(s, "1") == 0 || strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0 ||
        strcasecmp(s, "on") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "0") == 0 || strcasecmp(s, "false") == 0 || strcasecmp(s, "no") == 0 ||
        strcasecmp(s, "off") == 0) {
        *out = false;
        return true;
    }
    return false;
}

/* Parses one value into its field; false when malformed or out of range. */
static bool parse_row(const struct fx_config_row *row, const char *val, struct fx_config *cfg)
{
    char *field = (char *)cfg + row->offset;
    unsigned long long v;
    char *end = NULL;
    long long iv;

    switch (row->type) {
    case FX_CFG_INT:
        errno = 0;
        iv    = strtoll(val, &end, 10);
        if (errno != 0 || end == val || *end != '\0' || iv < row->min || iv > row->max) {
            return false;
        }
        *(int *)field = (int)iv;
        return true;
    case FX_CFG_SIZE:
        if (!fx_config_parse_size(val, &v) || v > (unsigned long long)row->max) {
            return false;
        }
        *(size_t *)field = (size_t)v;
        return true;
    case FX_CFG_BOOL:
        return parse_bool(val, (bool *)field);
    case FX_CFG_STRING:
        if (strlen(val) >= row->size) {
            return false;
        }
        memcpy(field, val, strlen(val) + 1);
        return true;
    case FX_CFG_DOC:
        return true;
    }
    return false;
}

static const struct fx_config_row *find_row(const char *name, size_t len)
{
    for (size_t i = 0; i < fx_config_table_len; i++) {
        if (strlen(fx_config_table[i].name) == len &&
            strncmp(fx_config_table[i].name, name, len) == 0) {
            return &fx_config_table[i];
        }
    }
    return NULL;
}

static void warn_unknown_once(void)
{
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');

        if (strncmp(*e, "FX_", 3) != 0 || eq == NULL) {
            continue;
        }
        if (find_row(*e, (size_t)(eq - *e)) == NULL) {
            fx_warn(FX_SUB_ENV, "unknown variable %.*s ignored", (int)(eq - *e), *e);
        }
    }
}

static pthread_once_t unknown_once = PTHREAD_ONCE_INIT;

fx_status fx_config_load(struct fx_config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    pthread_once(&unknown_once, warn_unknown_once);
    for (size_t i = 0; i < fx_config_table_len; i++) {
        const struct fx_config_row *row = &fx_config_table[i];
        const char *val;

        if (row->type == FX_CFG_DOC) {
            continue;
        }
        if (!parse_row(row, row->defval, cfg)) {
            snprintf(err, errlen, "internal: default of %s is invalid", row->name);
            return FX_ERR_INTERNAL;
        }
        val = getenv(row->name);
        if (val == NULL || val[0] == '\0') {
            continue;
        }
        if (!parse_row(row, val, cfg)) {
            snprintf(err, errlen, "%s=%s is not a valid value (%s)", row->name, val, row->help);
            return FX_ERR_INVALID_ARG;
        }
        fx_info(FX_SUB_ENV, "%s set by environment to %s", row->name, val);
    }
    if (strcmp(cfg->kernels, "auto") != 0 && strcmp(cfg->kernels, "scalar") != 0 &&
        strcmp(cfg->kernels, "avx2") != 0 && strcmp(cfg->kernels, "avx512") != 0 &&
        strcmp(cfg->kernels, "avx512fp16") != 0) {
        snprintf(err, errlen,
                 "FX_KERNELS=%s is not a valid value (auto, scalar, avx2, avx512 or avx512fp16)",
                 cfg->kernels);
        return FX_ERR_INVALID_ARG;
    }
    return FX_OK;
}
