/*
 * Communicator life cycle: init (config, transport, bootstrap, ring connections, executor),
 * destroy, abort, and the error state.
 */
#include "fx_comm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "collectives/coll_kernels.h"
#include "collectives/coll_tune.h"
#include "fx_conn.h"
#include "fx_exec.h"
#include "fx_tune.h"
#include "fx_log.h"
#include "fx_route.h"
#include "fx_sock.h"
#include "fx_status_int.h"
#include "fx_place.h"

/* ------------------------------------------------------------------ errors */

fx_status fx_comm_note_error(struct fx_comm *comm, fx_status status, const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&comm->lock);
    va_start(ap, fmt);
    vsnprintf(comm->last_msg, sizeof(comm->last_msg), fmt, ap);
    va_end(ap);
    comm->last_status = status;
    pthread_mutex_unlock(&comm->lock);
    return status;
}

void fx_comm_fail(struct fx_comm *comm, fx_status status, int failed_rank, bool propagate,
                  const char *fmt, ...)
{
    va_list ap;

    if (comm->error != FX_OK) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(comm->errmsg, sizeof(comm->errmsg), fmt, ap);
    va_end(ap);
    comm->error       = status;
    comm->last_status = status;
    memcpy(comm->last_msg, comm->errmsg, sizeof(comm->last_msg));
    if (propagate) {
        fx_warn(FX_SUB_COLL, "%s", comm->errmsg);
        fx_boot_ctrl_abort(&comm->boot, status, failed_rank, comm->errmsg);
    } else {
        fx_info(FX_SUB_COLL, "communicator failed: %s", comm->errmsg);
    }
    /* Posted receives point into user buffers: closing frees them before the user gets the
     * error and reuses the memory. */
    fx_conn_close_all(comm);
    fx_exec_fail_all(comm, status);
}

void fx_comm_wake(struct fx_comm *comm)
{
    uint64_t one = 1;

    if (comm->wakefd >= 0 && write(comm->wakefd, &one, sizeof(one)) < 0) {
        /* The counter is saturated: a wake-up is pending anyway. */
    }
}

/* ------------------------------------------------------------------ init */

/*
 * Host identity: the host name, and a hash of it with the kernel's boot id and the network
 * namespace. Ranks with equal ids share memory through the shm transport, whose rendezvous is an
 * abstract UNIX socket: those exist per network namespace, so ranks in two namespaces of one
 * kernel (containers, or the test bed's namespace hosts) are two hosts, talking over the network.
 */
static void host_identity(struct fx_boot_entry *self)
{
    char where[192] = "";
    size_t used     = 0;
    uint8_t digest[FX_SECRET_LEN];
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (gethostname(self->host, sizeof(self->host)) != 0) {
        snprintf(self->host, sizeof(self->host), "unknown");
    }
    self->host[sizeof(self->host) - 1] = '\0';
    if (fd >= 0) {
        n    = read(fd, where, 64);
        used = n > 0 ? (size_t)n : 0;
        close(fd);
    }
    n = readlink("/proc/self/ns/net", where + used, sizeof(where) - used - 1);
    used += n > 0 ? (size_t)n : 0;
    where[used] = '\0';
    fx_auth_derive(self->host, where, used, digest);
    memcpy(self->host_id, digest, sizeof(self->host_id));
}

/* Starts transport ops, listens, and publishes its address in self. */
static fx_status start_transport(struct fx_comm *comm, const struct fx_transport_ops *ops,
                                 const struct fx_tp_config *tcfg, struct fx_boot_entry *self,
                                 char *err, size_t errlen)
{
    struct fx_comm_tp *ct  = &comm->tps[comm->ntps];
    struct fx_boot_addr *a = &self->addrs[self->naddrs];
    fx_status status       = ops->init(tcfg, &ct->tp);

    if (status != FX_OK) {
        snprintf(err, errlen, "transport %s failed to start: %s", ops->name, fx_strerror(status));
        return status;
    }
    ct->ops = ops;
    comm->ntps++;
    status = ops->listen(ct->tp, &a->addr, &ct->lst);
    if (status != FX_OK) {
        snprintf(err, errlen, "transport %s cannot listen: %s", ops->name, fx_strerror(status));
        return status;
    }
    snprintf(a->tp, sizeof(a->tp), "%s", ops->name);
    self->naddrs++;
    return FX_OK;
}

/*
 * Starts the transports this rank offers: the one FX_TRANSPORT names; else the first network
 * transport of the build and, unless FX_SHM_DISABLE=1, shared memory for ranks of this host.
 * Which one each pair uses is decided after the bootstrap (choose_routes).
 */
static fx_status open_transports(struct fx_comm *comm, struct fx_boot_entry *self, char *err,
                                 size_t errlen)
{
    struct fx_tp_config tcfg = {
        .ifname        = comm->cfg.socket_ifname[0] ? comm->cfg.socket_ifname : NULL,
        .nsocks        = comm->cfg.nsocks,
        .timeout_ms    = comm->cfg.timeout_ms,
        .zerocopy      = comm->cfg.tcp_zerocopy,
        .reg_cache_max = comm->cfg.reg_cache_max,
        .ib_hca        = comm->cfg.ib_hca[0] ? comm->cfg.ib_hca : NULL,
        .ib_gid_index  = comm->cfg.ib_gid_index,
        .ib_tc         = comm->cfg.ib_tc,
        .ib_sl         = comm->cfg.ib_sl,
        .ib_qps        = comm->cfg.ib_qps,
    };
    bool have_net = false;
    char picked[256];
    fx_status status;

    status = fx_place_process(&comm->cfg, &self->place, picked, sizeof(picked), err, errlen);
    if (status != FX_OK) {
        return status;
    }
    if (tcfg.ifname == NULL && picked[0] != '\0') {
        tcfg.ifname = picked;
    }
    tcfg.ib_near = self->place.nic[0] != '\0' ? self->place.nic : NULL;
    if (comm->cfg.transport[0]) {
        const struct fx_transport_ops *ops = fx_transport_find(comm->cfg.transport);

        if (ops == NULL) {
            char names[64] = "";

            for (int i = 0; fx_transports[i] != NULL; i++) {
                size_t used = strlen(names);

                snprintf(names + used, sizeof(names) - used, "%s%s", i > 0 ? ", " : "",
                         fx_transports[i]->name);
            }
            snprintf(err, errlen, "FX_TRANSPORT=%s is not a transport of this build (%s)",
                     comm->cfg.transport, names);
            return FX_ERR_INVALID_ARG;
        }
        return start_transport(comm, ops, &tcfg, self, err, errlen);
    }
    for (int i = 0; fx_transports[i] != NULL && self->naddrs < FX_BOOT_MAX_ADDRS; i++) {
        const struct fx_transport_ops *ops = fx_transports[i];
        bool local_only                    = (ops->caps & FX_TP_CAP_LOCAL_ONLY) != 0;

        if ((local_only && comm->cfg.shm_disable) || (!local_only && have_net)) {
            continue;
        }
        status = start_transport(comm, ops, &tcfg, self, err, errlen);
        if (status != FX_OK) {
            return status;
        }
        have_net = have_net || !local_only;
    }
    return FX_OK;
}

/* Index in comm->tps of the running transport ops, or -1 (also for NULL). */
static int tp_index(const struct fx_comm *comm, const struct fx_transport_ops *ops)
{
    for (int t = 0; ops != NULL && t < comm->ntps; t++) {
        if (comm->tps[t].ops == ops) {
            return t;
        }
    }
    return -1;
}

/*
 * Decides the transport of every pair from the table (fx_route.h), closes the transports no
 * pair uses, and logs the choice.
 */
static fx_status choose_routes(struct fx_comm *comm, char *err, size_t errlen)
{
    const struct fx_boot_entry *me = &comm->boot.table[comm->rank];
    int used[FX_BOOT_MAX_ADDRS]    = {0};
    int remap[FX_BOOT_MAX_ADDRS];
    int kept = 0;

    for (int r = 0; r < comm->nranks; r++) {
        const struct fx_transport_ops *ops;
        char why[256];
        int t;

        comm->peer_tp[r] = -1;
        if (r == comm->rank) {
            continue;
        }
        ops = fx_route_choose(me, &comm->boot.table[r], why, sizeof(why));
        t   = tp_index(comm, ops);
        if (t < 0) {
            if (comm->cfg.transport[0] && comm->ntps == 1 &&
                (comm->tps[0].ops->caps & FX_TP_CAP_LOCAL_ONLY)) {
                char who[160];

                fx_boot_rank_str(&comm->boot, r, who, sizeof(who));
                snprintf(err, errlen,
                         "FX_TRANSPORT=%s reaches only ranks of this host (%s), but %s is "
                         "elsewhere",
                         comm->tps[0].ops->name, me->host, who);
            } else {
                snprintf(err, errlen, "%s", why);
            }
            return FX_ERR_INVALID_ARG;
        }
        comm->peer_tp[r] = (int8_t)t;
        used[t]++;
    }
    for (int t = 0; t < comm->ntps; t++) {
        if (used[t] == 0 && comm->nranks > 1) {
            fx_trace(FX_SUB_INIT, "transport %s: no peer uses it, closed", comm->tps[t].ops->name);
            comm->tps[t].ops->listen_close(comm->tps[t].lst);
            comm->tps[t].ops->fini(comm->tps[t].tp);
            remap[t] = -1;
            continue;
        }
        remap[t]          = kept;
        comm->tps[kept++] = comm->tps[t];
        fx_info(FX_SUB_INIT, "transport %s to %d of %d peers", comm->tps[t].ops->name, used[t],
                comm->nranks - 1);
    }
    comm->ntps = kept;
    for (int r = 0; r < comm->nranks; r++) {
        if (comm->peer_tp[r] >= 0) {
            comm->peer_tp[r] = (int8_t)remap[comm->peer_tp[r]];
        }
    }
    return FX_OK;
}

/* The progress thread's idle tick waits on the monotonic clock. */
static void cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

static fx_status comm_alloc(struct fx_comm **out, int nranks, int rank)
{
    struct fx_comm *comm = calloc(1, sizeof(*comm));

    if (comm == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    comm->rank       = rank;
    comm->nranks     = nranks;
    comm->epfd       = -1;
    comm->wakefd     = -1;
    comm->send_conns = calloc((size_t)nranks, sizeof(*comm->send_conns));
    comm->recv_conns = calloc((size_t)nranks, sizeof(*comm->recv_conns));
    comm->connecting = calloc((size_t)nranks, sizeof(*comm->connecting));
    comm->p2p_sent   = calloc((size_t)nranks, sizeof(*comm->p2p_sent));
    comm->p2p_recvd  = calloc((size_t)nranks, sizeof(*comm->p2p_recvd));
    comm->peer_tp    = malloc((size_t)nranks * sizeof(*comm->peer_tp));
    if (comm->peer_tp != NULL) {
        memset(comm->peer_tp, -1, (size_t)nranks * sizeof(*comm->peer_tp));
    }
    pthread_mutex_init(&comm->lock, NULL);
    cond_init_monotonic(&comm->cond);
    *out = comm;
    if (comm->send_conns == NULL || comm->recv_conns == NULL || comm->connecting == NULL ||
        comm->p2p_sent == NULL || comm->p2p_recvd == NULL || comm->peer_tp == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    return FX_OK;
}

static void comm_free(struct fx_comm *comm)
{
    fx_exec_fini(comm);
    if (comm->send_conns != NULL && comm->recv_conns != NULL && comm->connecting != NULL &&
        comm->peer_tp != NULL) {
        fx_conn_close_all(comm);
    }
    for (int t = 0; t < comm->ntps; t++) {
        if (comm->tps[t].lst != NULL) {
            comm->tps[t].ops->listen_close(comm->tps[t].lst);
        }
        comm->tps[t].ops->fini(comm->tps[t].tp);
    }
    fx_boot_fini(&comm->boot);
    fx_links_fini(&comm->links);
    free(comm->send_conns);
    free(comm->recv_conns);
    free(comm->connecting);
    free(comm->p2p_sent);
    free(comm->p2p_recvd);
    free(comm->peer_tp);
    free(comm->ring_order);
    pthread_mutex_destroy(&comm->lock);
    pthread_cond_destroy(&comm->cond);
    free(comm);
}

/*
 * The ring order every rank derives alike from the table: ranks of one host adjacent, hosts in
 * the order their lowest rank appears, so each ring crosses each host boundary once.
 */
/* host[r]: the lowest rank on rank r's host (the bootstrap's host identity). */
static void host_leaders(const struct fx_comm *comm, int *host)
{
    for (int r = 0; r < comm->nranks; r++) {
        host[r] = r;
        for (int q = 0; q < r; q++) {
            if (fx_route_same_host(&comm->boot.table[q], &comm->boot.table[r])) {
                host[r] = q;
                break;
            }
        }
    }
}

/* "dddd:bb:dd.f" as a number in PCI order; -1 when empty or malformed. */
static int64_t pci_number(const char *pci)
{
    unsigned dom, bus, dev, fn;

    if (sscanf(pci, "%4x:%2x:%2x.%1x", &dom, &bus, &dev, &fn) != 4) {
        return -1;
    }
    return (int64_t)dom << 16 | bus << 8 | dev << 3 | fn;
}

/*
 * Each rank's place inside its host, for the ring order: NUMA node of its NIC, then the bus id
 * of its accelerator (else its NIC), so ranks whose devices share a PCIe switch or a NUMA node
 * are neighbours. Ranks whose place is unknown keep their rank order after the others.
 */
static void local_keys(const struct fx_comm *comm, int64_t *key)
{
    for (int r = 0; r < comm->nranks; r++) {
        const struct fx_boot_place *p = &comm->boot.table[r].place;
        int64_t pci                   = pci_number(p->dev_pci[0] ? p->dev_pci : p->nic_pci);

        key[r] = p->nnics < 0 || pci < 0 ? INT64_MAX : (int64_t)(p->numa + 1) << 40 | pci;
    }
}

/* Appends text to a comma-separated line, unless it is empty or already one of the items. */
static void add_unique(char *line, size_t len, const char *text)
{
    size_t used   = strlen(line);
    size_t tl     = strlen(text);
    const char *p = line;

    if (tl == 0) {
        return;
    }
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t n        = end != NULL ? (size_t)(end - p) : strlen(p);

        if (n == tl && strncmp(p, text, tl) == 0) {
            return;
        }
        p += n + (end != NULL);
    }
    snprintf(line + used, len - used, "%s%s", used ? "," : "", text);
}

/*
 * Rank 0, at INFO: what the table says of each host (docs/topology.md), one line per host:
 * its ranks, the NICs they use and their accelerators.
 */
static void log_hosts(const struct fx_comm *comm, const int *host)
{
    if (comm->rank != 0 || !fx_log_enabled(FX_LOG_INFO, FX_SUB_INIT)) {
        return;
    }
    for (int h = 0; h < comm->nranks; h++) {
        char ranks[160] = "", nics[160] = "", devs[200] = "";
        int known = 0;

        if (host[h] != h) {
            continue;
        }
        for (int r = h; r < comm->nranks; r++) {
            const struct fx_boot_place *p = &comm->boot.table[r].place;
            char num[16];

            if (host[r] != h) {
                continue;
            }
            snprintf(num, sizeof(num), "%d", r);
            add_unique(ranks, sizeof(ranks), num);
            add_unique(nics, sizeof(nics), p->nic);
            add_unique(devs, sizeof(devs), p->dev_pci);
            known += p->nnics >= 0;
        }
        fx_info(FX_SUB_INIT, "host %s: ranks %s; NICs used: %s; accelerators: %s%s",
                comm->boot.table[h].host, ranks, nics[0] ? nics : "-", devs[0] ? devs : "-",
                known ? "" : " (place not read: FX_SOCKET_IFNAME set, no FX_DEVICE)");
    }
}

static fx_status make_ring_order(struct fx_comm *comm)
{
    int n          = comm->nranks;
    int *host      = malloc(sizeof(int) * (size_t)n);
    int64_t *local = malloc(sizeof(int64_t) * (size_t)n);
    char text[256];
    size_t used = 0;
    bool moved  = false;

    comm->ring_order = malloc(sizeof(int) * (size_t)n);
    if (host == NULL || local == NULL || comm->ring_order == NULL) {
        free(host);
        free(local);
        return FX_ERR_NO_MEMORY;
    }
    host_leaders(comm, host);
    comm->nhosts = 0;
    for (int r = 0; r < n; r++) {
        comm->nhosts += host[r] == r;
    }
    local_keys(comm, local);
    fx_coll_ring_order(host, local, n, comm->ring_order);
    log_hosts(comm, host);
    free(host);
    free(local);
    text[0] = '\0';
    for (int p = 0; p < n; p++) {
        int w;

        if (comm->ring_order[p] == comm->rank) {
            comm->ring_pos = p;
        }
        moved |= comm->ring_order[p] != p;
        w    = snprintf(text + used, sizeof(text) - used, " %d", comm->ring_order[p]);
        used = w > 0 && (size_t)w < sizeof(text) - used ? used + (size_t)w : sizeof(text) - 1;
    }
    if (moved) {
        fx_info(FX_SUB_INIT, "ring order, ranks of a host adjacent, in PCI order where known:%s",
                text);
    }
    return FX_OK;
}

/* Rank 0's monitor receives every rank's link report through the control plane, and judges
 * the links once the reports of a round are in (fx_links_eval_due); its own report comes from
 * its tick, which judges on its own account. */
static void on_link_report(void *arg, int rank, const uint8_t *payload, size_t len)
{
    struct fx_comm *comm = arg;
    int64_t now          = fx_now_ms();

    fx_links_on_report(&comm->links, rank, payload, len, now);
    if (rank != 0 && fx_links_eval_due(&comm->links, now, false)) {
        fx_links_evaluate(&comm->links, &comm->boot, now);
    }
}

/* Per-peer statistics (FX_LINK_STATS); rank 0 numbers the hosts for its monitor. */
static fx_status start_link_stats(struct fx_comm *comm)
{
    int *host_of = malloc((size_t)comm->nranks * sizeof(*host_of));
    int nhosts   = 0;
    fx_status status;

    if (host_of == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    host_leaders(comm, host_of);
    for (int r = 0; r < comm->nranks; r++) { /* leaders number the hosts in rank order */
        host_of[r] = host_of[r] == r ? nhosts++ : host_of[host_of[r]];
    }
    status = fx_links_init(&comm->links, comm->cfg.link_stats, comm->rank, comm->nranks, host_of,
                           nhosts);
    free(host_of);
    if (status == FX_OK && comm->links.on && comm->rank == 0) {
        comm->boot.on_report  = on_link_report;
        comm->boot.report_arg = comm;
    }
    return status;
}

/* Forgets the operations of the init measurement: numbers restart as if none had run. */
static void reset_counters(struct fx_comm *comm)
{
    comm->op_seq = 0;
    memset(comm->p2p_sent, 0, (size_t)comm->nranks * sizeof(*comm->p2p_sent));
    memset(comm->p2p_recvd, 0, (size_t)comm->nranks * sizeof(*comm->p2p_recvd));
    memset(comm->exec.last_algo, 0, sizeof(comm->exec.last_algo));
    comm->exec.last_coll = 0;
}

/* Applies FX_KERNELS (already checked to be a set's name); a set this CPU lacks is
 * FX_ERR_UNSUPPORTED naming the missing feature. */
static fx_status select_kernels(const char *name, char *err, size_t errlen)
{
    enum fx_coll_kset set;

    if (!fx_coll_kset_parse(name, &set)) {
        snprintf(err, errlen,
                 "FX_KERNELS=%s is not a kernel set (auto, scalar, avx2, avx512, avx512fp16)",
                 name);
        return FX_ERR_INVALID_ARG;
    }
    return fx_coll_kernels_select(set, err, errlen);
}

/* Everything after the arguments are known good. */
static fx_status comm_setup(struct fx_comm *comm, const struct fx_uid *uid, char *err,
                            size_t errlen)
{
    struct fx_boot_entry self;
    struct fx_boot_info proposal = {.comm_id = 0};
    fx_status status             = fx_config_load(&comm->cfg, err, errlen);

    if (status != FX_OK) {
        return status;
    }
    status = select_kernels(comm->cfg.kernels, err, errlen);
    if (status != FX_OK) {
        return status;
    }
    proposal.chunk_bytes = comm->cfg.chunk_bytes;
    status               = fx_coll_algo_parse(comm->cfg.algo, &proposal.algos, err, errlen);
    if (status != FX_OK) {
        return status;
    }
    memset(&self, 0, sizeof(self));
    self.rank = comm->rank;
    self.pid  = (int32_t)getpid();
    host_identity(&self);
    status = open_transports(comm, &self, err, errlen);
    if (status != FX_OK) {
        return status;
    }
    status = fx_boot_init(&comm->boot, uid, comm->nranks, comm->rank, &self, &proposal,
                          comm->cfg.timeout_ms, err, errlen);
    if (status != FX_OK) {
        return status;
    }
    status = choose_routes(comm, err, errlen);
    if (status != FX_OK) {
        return status;
    }
    status = make_ring_order(comm);
    if (status != FX_OK) {
        snprintf(err, errlen, "out of memory");
        return status;
    }
    if (comm->nranks > 1) {
        status = fx_conn_connect_ring(comm, err, errlen);
        if (status != FX_OK) {
            return status;
        }
    }
    status = fx_exec_init(comm, err, errlen);
    if (status != FX_OK) {
        return status;
    }
    status = fx_tune_measure(comm, err, errlen);
    if (status != FX_OK && comm->error == FX_OK) {
        return status; /* a local failure (memory): the other ranks time out naming this one */
    }
    if (status != FX_OK) {
        /* This rank had joined and connected; the communicator broke while it measured (a rank
         * that finished first may already have failed its first call, or died). Init stands,
         * as if the failure had come just after it: the first call reports the error. */
        fx_info(FX_SUB_INIT, "cost model not measured: %s", err);
        err[0] = '\0';
    }
    /* The measurement is not the user's traffic: its operations are not counted, and link
     * statistics start after it. */
    pthread_mutex_lock(&comm->lock);
    reset_counters(comm);
    status = start_link_stats(comm);
    pthread_mutex_unlock(&comm->lock);
    if (status != FX_OK) {
        snprintf(err, errlen, "out of memory for link statistics");
    }
    return status;
}

static fx_status init_uid(fx_comm_t *comm_out, int nranks, const struct fx_uid *uid, int rank)
{
    struct fx_comm *comm = NULL;
    char err[512]        = "";
    fx_status status;

    fx_log_set_rank(rank);
    status = comm_alloc(&comm, nranks, rank);
    if (status == FX_OK) {
        status = comm_setup(comm, uid, err, sizeof(err));
    } else {
        snprintf(err, sizeof(err), "out of memory for a communicator of %d ranks", nranks);
    }
    if (status != FX_OK) {
        fx_warn(FX_SUB_INIT, "init of rank %d of %d failed: %s", rank, nranks, err);
        if (comm != NULL) {
            comm_free(comm);
        }
        return fx_set_last_error(status, "%s", err);
    }
    fx_info(FX_SUB_INIT, "rank %d of %d ready", rank, nranks);
    *comm_out = comm;
    return FX_OK;
}

FX_API fx_status fx_comm_init_rank(fx_comm_t *comm, int nranks, fx_unique_id id, int rank)
{
    struct fx_uid uid;
    char err[200];

    if (comm == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_init_rank: comm is NULL");
    }
    if (nranks < 1) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_init_rank: nranks %d < 1", nranks);
    }
    if (rank < 0 || rank >= nranks) {
        return fx_set_last_error(FX_ERR_INVALID_ARG,
                                 "fx_comm_init_rank: rank %d out of range [0, %d)", rank, nranks);
    }
    if (fx_uid_unpack(&id, &uid, err, sizeof(err)) != FX_OK) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_init_rank: %s", err);
    }
    return init_uid(comm, nranks, &uid, rank);
}

/* ------------------------------------------------------------------ launcher environment */

static const char *first_env(const char *const *names, const char **which)
{
    for (int i = 0; names[i] != NULL; i++) {
        const char *v = getenv(names[i]);

        if (v != NULL && v[0] != '\0') {
            *which = names[i];
            return v;
        }
    }
    return NULL;
}

static fx_status env_int(const char *const *names, const char *what, int *out)
{
    const char *which = NULL;
    const char *v     = first_env(names, &which);
    char *end         = NULL;
    long n;

    if (v == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG,
                                 "fx_comm_init_env: no %s in the environment (set %s)", what,
                                 names[0]);
    }
    errno = 0;
    n     = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || n < 0 || n > 1 << 24) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_init_env: %s=%s is not a %s", which,
                                 v, what);
    }
    *out = (int)n;
    return FX_OK;
}

FX_API fx_status fx_comm_init_env(fx_comm_t *comm)
{
    static const char *const rank_vars[] = {
        "FX_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", NULL};
    static const char *const size_vars[] = {"FX_NRANKS", "WORLD_SIZE",   "OMPI_COMM_WORLD_SIZE",
                                            "PMI_SIZE",  "SLURM_NTASKS", NULL};
    const char *id_str                   = getenv("FX_UNIQUE_ID");
    const char *maddr                    = getenv("MASTER_ADDR");
    const char *mport                    = getenv("MASTER_PORT");
    struct fx_uid uid;
    fx_unique_id id;
    char err[300];
    int rank;
    int nranks;
    fx_status status;

    if (comm == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_init_env: comm is NULL");
    }
    if ((status = env_int(rank_vars, "rank", &rank)) != FX_OK ||
        (status = env_int(size_vars, "number of ranks", &nranks)) != FX_OK) {
        return status;
    }
    if (id_str != NULL && id_str[0] != '\0') {
        status = fx_unique_id_from_string(id_str, &id);
        if (status != FX_OK) {
            return fx_set_last_error(status, "FX_UNIQUE_ID: %s", fx_last_error());
        }
        return fx_comm_init_rank(comm, nranks, id, rank);
    }
    if (maddr == NULL || mport == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG,
                                 "fx_comm_init_env: no rendezvous: set FX_UNIQUE_ID, or "
                                 "MASTER_ADDR and MASTER_PORT");
    }
    status = fx_uid_from_master(maddr, mport, &uid, err, sizeof(err));
    if (status != FX_OK) {
        return fx_set_last_error(status, "fx_comm_init_env: %s", err);
    }
    if (nranks < 1 || rank >= nranks) {
        return fx_set_last_error(FX_ERR_INVALID_ARG,
                                 "fx_comm_init_env: rank %d out of range [0, %d)", rank, nranks);
    }
    return init_uid(comm, nranks, &uid, rank);
}

/* ------------------------------------------------------------------ queries, destroy, abort */

FX_API fx_status fx_comm_rank(fx_comm_t comm, int *rank)
{
    if (comm == NULL || rank == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_rank: NULL argument");
    }
    *rank = comm->rank;
    return FX_OK;
}

FX_API fx_status fx_comm_size(fx_comm_t comm, int *nranks)
{
    if (comm == NULL || nranks == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_size: NULL argument");
    }
    *nranks = comm->nranks;
    return FX_OK;
}

FX_API fx_status fx_comm_destroy(fx_comm_t comm)
{
    if (comm == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_destroy: comm is NULL");
    }
    comm_free(comm);
    return FX_OK;
}

FX_API fx_status fx_comm_abort(fx_comm_t comm)
{
    if (comm == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_abort: comm is NULL");
    }
    pthread_mutex_lock(&comm->lock);
    fx_comm_fail(comm, FX_ERR_ABORTED, comm->rank, true, "rank %d aborted the communicator",
                 comm->rank);
    pthread_mutex_unlock(&comm->lock);
    fx_comm_wake(comm);
    return FX_OK;
}

FX_API fx_status fx_comm_get_error(fx_comm_t comm, char *msg, size_t len)
{
    fx_status status;

    if (comm == NULL || (msg == NULL && len > 0)) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_get_error: NULL argument");
    }
    pthread_mutex_lock(&comm->lock);
    status = comm->last_status;
    if (len > 0) {
        snprintf(msg, len, "%s", status == FX_OK ? "" : comm->last_msg);
    }
    pthread_mutex_unlock(&comm->lock);
    return status;
}

FX_API fx_status fx_comm_stats(fx_comm_t comm, fx_link_stats *links, int max, int *nlinks)
{
    struct fx_link_clock now = {0, 0};
    int k                    = 0;

    if (comm == NULL || nlinks == NULL || max < 0 || (links == NULL && max > 0)) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_stats: %s",
                                 comm == NULL     ? "comm is NULL"
                                 : nlinks == NULL ? "nlinks is NULL"
                                 : max < 0        ? "max is negative"
                                                  : "links is NULL with max > 0");
    }
    pthread_mutex_lock(&comm->lock);
    for (int p = 0; p < comm->nranks && k < max; p++) {
        fx_link_stats *s = &links[k];

        if (p == comm->rank) {
            continue;
        }
        memset(s, 0, sizeof(*s));
        fx_links_snapshot(&comm->links, p, &now, s);
        if (comm->peer_tp[p] >= 0) {
            snprintf(s->transport, sizeof(s->transport), "%s", fx_comm_peer_ops(comm, p)->name);
        }
        snprintf(s->host, sizeof(s->host), "%s", comm->boot.table[p].host);
        k++;
    }
    *nlinks = comm->nranks - 1;
    pthread_mutex_unlock(&comm->lock);
    return FX_OK;
}
