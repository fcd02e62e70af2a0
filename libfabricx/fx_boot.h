/*
 * Bootstrap and control plane (DESIGN.md, "Bootstrap").
 *
 * Rank 0 listens on the unique id's port. Each rank connects and the two prove knowledge of the
 * job secret to each other (HMAC-SHA256 over fresh nonces) before anything else is read; then
 * the rank sends its join record (rank, host, data-plane addresses, one per transport) and
 * rank 0 answers, once all ranks have joined, with the whole table and the job-wide settings.
 * Garbage, wrong secrets and silent connections are dropped and logged while init goes on.
 *
 * The connections to rank 0 stay open as the control plane: a rank that detects a failure sends
 * an abort notice to rank 0, which relays it to every rank, so that all ranks fail fast with
 * the same, original error; rank 0 also notices a rank whose connection closes without a
 * goodbye. Wire formats are in fx_boot.c.
 *
 * Stalls: a rank whose collective makes no progress for half its timeout reports to rank 0 the
 * peer it waits for. When the first report is half a timeout old, rank 0 follows the chain of
 * waits (rank 1 waits for 0, which waits for 3, which waits for 2) to the rank at its end, the
 * one that reported no wait of its own, and names that rank to every rank: in a ring, a stopped
 * rank otherwise makes every rank time out naming only its own neighbour.
 */
#ifndef FX_BOOT_H
#define FX_BOOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"
#include "fx_auth.h"
#include "fx_uid.h"
#include "transports/transport.h"

#define FX_HOST_LEN       64
#define FX_BOOT_MAX_ADDRS 2
#define FX_BOOT_TP_NAME   8

/* A data-plane address a rank publishes, with the name of the transport that listens on it. */
struct fx_boot_addr {
    char tp[FX_BOOT_TP_NAME]; /* "tcp", "shm"; NUL-terminated */
    struct fx_tp_addr addr;
};

/* Where a rank sits in its host, from the topology (docs/topology.md); fields empty or -1 where
 * the rank did not read it (FX_SOCKET_IFNAME set, no FX_BIND, no accelerator asked for). */
struct fx_boot_place {
    char dev_pci[16]; /* the rank's accelerator, "0000:07:00.0"; empty: none */
    char nic[32];     /* the NIC it uses: RDMA device or first netdev name */
    char nic_pci[16];
    int32_t numa;      /* NUMA node of that NIC; -1 unknown */
    int32_t nnics;     /* NICs of its host; -1 unknown */
    int32_t ngpus;     /* accelerators of its host; -1 unknown */
    uint32_t nic_mbps; /* the NIC's PCI link in MB/s as hwloc reports it; 0 unknown */
    uint8_t nic_ib;    /* 1: InfiniBand, 0: Ethernet */
};

/* One rank's record in the table. */
struct fx_boot_entry {
    int32_t rank;
    int32_t pid;
    char host[FX_HOST_LEN];
    uint8_t host_id[16]; /* equal for ranks that can share memory (docs/shm.md) */
    int32_t naddrs;
    struct fx_boot_addr addrs[FX_BOOT_MAX_ADDRS];
    struct fx_boot_place place;
};

/* Settings every rank takes from rank 0. */
struct fx_boot_info {
    uint64_t comm_id;
    uint64_t chunk_bytes;
    uint64_t algos; /* FX_ALGO as fx_coll_algo_parse encodes it */
};

struct fx_boot_rx {
    uint8_t buf[1100];
    size_t have;
};

/* Rank 0's record of one rank's stall report. */
struct fx_boot_stall {
    int32_t on;       /* the rank it waits for; -1: no report */
    int64_t since_ms; /* when that rank's wait began, on rank 0's clock */
    int64_t got_ms;   /* when the report arrived */
    char what[96];    /* "allreduce #6: waiting for data from" */
};

struct fx_boot {
    int rank;
    int nranks;
    uint8_t secret[FX_SECRET_LEN];
    struct fx_boot_info info;
    struct fx_boot_entry *table; /* nranks entries, indexed by rank */
    int *fds;                    /* control sockets: rank 0 holds one per rank (-1 for itself
                                    and closed ones); other ranks hold fds[0], to rank 0 */
    bool *bye;                   /* rank 0: that rank said goodbye */
    struct fx_boot_rx *rx;       /* per control socket */
    int nfds;
    struct fx_boot_stall *stall; /* rank 0: nranks entries */
    int64_t first_stall_ms;      /* rank 0: when the oldest standing report arrived; 0: none */
    bool verdict_sent;           /* rank 0: a stall verdict went out */
    /* rank 0: called with each rank's periodic report (fx_boot_ctrl_report), its own included */
    void (*on_report)(void *arg, int rank, const uint8_t *payload, size_t len);
    void *report_arg;
};

enum fx_boot_event_kind {
    FX_BOOT_EV_NONE  = 0,
    FX_BOOT_EV_ABORT = 1, /* a failure somewhere in the job: status, failed rank, text */
};

struct fx_boot_event {
    enum fx_boot_event_kind kind;
    fx_status status;
    int failed_rank;
    char text[512];
};

/*
 * Joins the job. self describes this rank (its data-plane addresses included); rank 0 proposes
 * info (comm_id is drawn here). On success boot holds the table and the control sockets.
 * On failure err says why (missing ranks named on timeout).
 */
fx_status fx_boot_init(struct fx_boot *boot, const struct fx_uid *uid, int nranks, int rank,
                       const struct fx_boot_entry *self, const struct fx_boot_info *proposal,
                       int timeout_ms, char *err, size_t errlen);

/* Says goodbye on the control plane and frees everything. */
void fx_boot_fini(struct fx_boot *boot);

/* The control sockets to poll (readable: call fx_boot_ctrl_read). Returns the count. */
int fx_boot_ctrl_fds(const struct fx_boot *boot, int *fds, int max);

/*
 * Reads what arrived on control socket fd without blocking. A relayed abort, or (on rank 0) a
 * rank lost without goodbye, fills ev (rank 0 relays it to the others before returning).
 * A closed socket is closed here (and so leaves any epoll set).
 */
void fx_boot_ctrl_read(struct fx_boot *boot, int fd, struct fx_boot_event *ev);

/* Tells the job about a failure this rank detected (rank 0 broadcasts it directly). */
void fx_boot_ctrl_abort(struct fx_boot *boot, fx_status status, int failed_rank, const char *text);

/*
 * Reports that this rank's operation `what` has waited idle_ms for rank waiting_on, or
 * withdraws the report (waiting_on -1) once it moves again. Rank 0 records its own.
 */
void fx_boot_ctrl_stall(struct fx_boot *boot, int waiting_on, int64_t idle_ms, const char *what);

/*
 * Sends rank 0 a periodic report (at most 1024 bytes, opaque to the bootstrap: the link
 * statistics of fx_links.h), handed there to boot->on_report. Best effort, never blocks; rank 0
 * hands its own over directly.
 */
void fx_boot_ctrl_report(struct fx_boot *boot, const void *payload, size_t len);

/*
 * Rank 0: once the oldest standing stall report is grace_ms old, names the rank at the end of
 * the chain of waits in ev (an abort with FX_ERR_TIMEOUT) and sends it to every rank. At most
 * once per job; does nothing on other ranks.
 */
void fx_boot_stall_verdict(struct fx_boot *boot, int64_t grace_ms, struct fx_boot_event *ev);

/* "rank 3 (host b, pid 1234)" */
void fx_boot_rank_str(const struct fx_boot *boot, int rank, char *buf, size_t len);

#endif /* FX_BOOT_H */
