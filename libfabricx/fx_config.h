/*
 * FX_* configuration: one table of variables (name, type, default, help), parsed into a
 * struct fx_config at communicator init. The README's table is checked against it by a unit
 * test; unknown FX_* names in the environment draw one warning.
 */
#ifndef FX_CONFIG_H
#define FX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "fabricx.h"

struct fx_config {
    int timeout_ms;          /* FX_TIMEOUT_MS */
    size_t chunk_bytes;      /* FX_CHUNK_BYTES; 0: chosen per operation */
    int nsocks;              /* FX_NSOCKS; 0: the transport's default */
    char transport[32];      /* FX_TRANSPORT; empty: chosen per pair */
    bool shm_disable;        /* FX_SHM_DISABLE */
    char socket_ifname[256]; /* FX_SOCKET_IFNAME */
    bool tcp_zerocopy;       /* FX_TCP_ZEROCOPY */
    bool bind;               /* FX_BIND */
    char device[64];         /* FX_DEVICE: accelerator index or PCI id, "none"; "": local rank */
    int scratch_slots;       /* FX_SCRATCH_SLOTS */
    char kernels[16];        /* FX_KERNELS: auto, scalar, avx2, avx512, avx512fp16 */
    char algo[256];          /* FX_ALGO: "allreduce:tree,allgather:ring"; empty: the tuner */
    int tune_latency_ns;     /* FX_TUNE_LATENCY_NS; 0: measured */
    int tune_link_mbps;      /* FX_TUNE_LINK_MBPS; 0: measured */
    int tune_reduce_mbps;    /* FX_TUNE_REDUCE_MBPS; 0: measured */
    char tune_cache[512];    /* FX_TUNE_CACHE: a directory, "none", or "" for the default */
    int spin_us;             /* FX_SPIN_US */
    bool link_stats;         /* FX_LINK_STATS */
    char ib_hca[256];        /* FX_IB_HCA: "mlx5_0:1,mlx5_1:1"; empty: the nearest RDMA NIC */
    int ib_gid_index;        /* FX_IB_GID_INDEX; -1: automatic */
    int ib_tc;               /* FX_IB_TC; -1: not set */
    int ib_sl;               /* FX_IB_SL */
    int ib_qps;              /* FX_IB_QPS_PER_CONN */
    size_t reg_cache_max;    /* FX_REG_CACHE_MAX: bytes; 0: no registration cache */
};

enum fx_config_type {
    FX_CFG_INT,
    FX_CFG_SIZE,
    FX_CFG_BOOL,
    FX_CFG_STRING,
    FX_CFG_DOC, /* read elsewhere (logger, launcher); listed for documentation and checks */
};

struct fx_config_row {
    const char *name;
    enum fx_config_type type;
    const char *defval;
    const char *help;
    size_t offset; /* into struct fx_config; unused for FX_CFG_DOC */
    size_t size;   /* FX_CFG_STRING: buffer size */
    long long min; /* FX_CFG_INT / FX_CFG_SIZE bounds */
    long long max;
};

extern const struct fx_config_row fx_config_table[];
extern const size_t fx_config_table_len;

/*
 * Fills cfg from the environment (defaults for unset variables). A malformed or out-of-range
 * value is FX_ERR_INVALID_ARG with the variable and value named in err.
 */
fx_status fx_config_load(struct fx_config *cfg, char *err, size_t errlen);

/* Parses "512K", "4M", "1G", "100" (binary suffixes). Returns false on malformed input. */
bool fx_config_parse_size(const char *s, unsigned long long *out);

#endif /* FX_CONFIG_H */
