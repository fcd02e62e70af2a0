/*
 * The RDMA verbs transport (libibverbs + librdmacm; docs/verbs.md).
 *
 * Design. A logical connection is nqp reliable-connected QPs (FX_IB_QPS_PER_CONN), each with
 * its own rdma_cm id (the QPs are our own, moved through their states by verbs_conn.c, so that
 * FX_IB_GID_INDEX is their source GID: verbs_gid.c); the connecting side's private data carries a
 * magic, the protocol version, a connection id grouping the QPs, the QP's index and the address and
 * rkey of its eager ring; the accepting side answers with its own ring in the accept's private
 * data. The hello (up to 128 bytes, more than a connect request carries) is the first message
 * written into the acceptor's ring once every QP is established; accept hands the connection up
 * when it arrived.
 *
 * Every message goes with RDMA_WRITE_WITH_IMM; the immediate value says what landed:
 *   IMM_SLOT   a slot of the peer's ring: VB_SLOTS slots of VB_EAGER_MAX bytes for messages
 *              (eager: framing, header and payload; RTS: framing and header of a large one)
 *              and VB_CSLOTS small slots for control (CTS), consumed at once;
 *   IMM_CREDIT slots the peer consumed (ring slots are reused in order, so credits come back
 *              in order);
 *   IMM_DATA   one part of a large payload written straight into the receive buffer.
 * A large message (header + payload > VB_EAGER_MAX) is announced by an RTS; the receive it
 * matches registers its buffer and answers with a CTS (address, rkey); the sender then writes
 * the payload split across the QPs, each part WITH_IMM, and the receive completes when every
 * part arrived. Lengths are compared when a message meets its receive, before any payload is
 * written: a mismatch copies the sender's header out and fails the connection.
 *
 * Every QP keeps VB_RQ_DEPTH zero-length receives posted (reposted as they complete), more
 * than the credits allow in flight, so a write never meets an empty receive queue. Completions
 * go to one CQ per connection, polled in progress(); the completion channels' fds and the
 * rdma_cm event channel's fd make up wait_fd's epoll set, and the CQs are armed only in
 * prepare_wait, so an idle process sleeps in the caller's poll.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <dirent.h>

#include "fx_log.h"
#include "fx_sock.h"
#include "transports/tcp/tcp_iface.h"
#include "transports/verbs/verbs_int.h"

#include "transports/tp_queue.h" /* after verbs_int.h: needs its request and queue types */

/* ------------------------------------------------------------------ registration */

/* The registration cache's callbacks: one MR usable for sends and for remote writes. */
static void *cache_reg(void *ctx, void *addr, size_t len, char *err, size_t errlen)
{
    struct vb_dev *d = ctx;
    struct ibv_mr *mr =
        ibv_reg_mr(d->pd, addr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);

    if (mr == NULL) {
        snprintf(err, errlen, "ibv_reg_mr of %zu bytes: %s", len, strerror(errno));
    }
    return mr;
}

static void cache_dereg(void *ctx, void *handle)
{
    if (ibv_dereg_mr(handle) != 0) {
        fx_warn(FX_SUB_NET, "verbs: ibv_dereg_mr: %s", strerror(errno));
    }
}

static const struct fx_rcache_ops cache_ops = {.reg = cache_reg, .dereg = cache_dereg};

/*
 * Registers a user buffer for one operation through the device's registration cache (which
 * registers for local and remote write). A send buffer the cache cannot register that way
 * (read-only memory) gets an MR of its own for local read, deregistered at completion.
 */
static bool vb_reg(struct fx_tp_conn *c, void *addr, size_t len, int access, struct vb_reg *reg)
{
    char err[160] = "";

    if (fx_rcache_get(c->dev->rc, addr, len, &reg->ent, err, sizeof(err)) == FX_OK) {
        reg->rc = c->dev->rc;
        reg->mr = fx_rcache_handle(reg->ent);
        return true;
    }
    reg->ent = NULL;
    reg->rc  = NULL;
    reg->mr  = access == 0 ? ibv_reg_mr(c->dev->pd, addr, len, 0) : NULL;
    if (reg->mr == NULL) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "cannot register %zu bytes at %p for %s: %s", len,
                        addr, c->peer, err[0] ? err : strerror(errno));
        return false;
    }
    return true;
}

static void vb_unreg(struct vb_reg *reg)
{
    if (reg->ent != NULL) {
        fx_rcache_put(reg->rc, reg->ent);
    } else if (reg->mr != NULL) {
        ibv_dereg_mr(reg->mr);
    }
    reg->ent = NULL;
    reg->rc  = NULL;
    reg->mr  = NULL;
}

/* ------------------------------------------------------------------ devices */

struct vb_dev *fx_vb_dev(struct fx_tp *tp, struct ibv_context *ctx)
{
    struct vb_dev *d;
    struct epoll_event ev = {.events = EPOLLIN};

    for (d = tp->devs; d != NULL; d = d->next) {
        if (d->ctx == ctx) {
            return d;
        }
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return NULL;
    }
    d->ctx  = ctx;
    d->pd   = ibv_alloc_pd(ctx);
    d->chan = d->pd != NULL ? ibv_create_comp_channel(ctx) : NULL;
    if (d->chan == NULL) {
        fx_warn(FX_SUB_NET, "verbs: %s: cannot allocate a protection domain or channel: %s",
                ibv_get_device_name(ctx->device), strerror(errno));
        if (d->pd != NULL) {
            ibv_dealloc_pd(d->pd);
        }
        free(d);
        return NULL;
    }
    {
        char err[160];

        if (fx_rcache_create(&cache_ops, d, tp->reg_cache_max, &d->rc, err, sizeof(err)) != FX_OK) {
            fx_warn(FX_SUB_NET, "verbs: no registration cache: %s", err);
            ibv_destroy_comp_channel(d->chan);
            ibv_dealloc_pd(d->pd);
            free(d);
            return NULL;
        }
    }
    (void)fcntl(d->chan->fd, F_SETFL, fcntl(d->chan->fd, F_GETFL) | O_NONBLOCK);
    ev.data.ptr = d;
    if (epoll_ctl(tp->efd, EPOLL_CTL_ADD, d->chan->fd, &ev) != 0) {
        fx_warn(FX_SUB_NET, "verbs: epoll_ctl: %s", strerror(errno));
    }
    d->next  = tp->devs;
    tp->devs = d;
    return d;
}

static const char *link_layer_str(uint8_t ll)
{
    return ll == IBV_LINK_LAYER_ETHERNET     ? "Ethernet (RoCE)"
           : ll == IBV_LINK_LAYER_INFINIBAND ? "InfiniBand"
                                             : "unspecified (InfiniBand)";
}

static int mtu_bytes(enum ibv_mtu m)
{
    return m >= IBV_MTU_256 && m <= IBV_MTU_4096 ? 128 << m : 0;
}

/* Gb/s of one lane (ibv_query_port(3): active_speed) and the lane count (active_width). */
static double lane_gbps(unsigned speed)
{
    switch (speed) {
    case 1:
        return 2.5;
    case 2:
        return 5.0;
    case 4:
    case 8:
        return 10.0;
    case 16:
        return 14.0;
    case 32:
        return 25.0;
    case 64:
        return 50.0;
    case 128:
        return 100.0;
    default:
        return 0.0;
    }
}

static int width_lanes(unsigned w)
{
    return w == 1 ? 1 : w == 2 ? 4 : w == 4 ? 8 : w == 8 ? 12 : w == 16 ? 2 : 0;
}

/* Does the name in a "dev[:port]" list entry name this device (or one of its netdevs)? */
static bool device_is(const char *dev, const char *name)
{
    char path[300];

    if (strcmp(dev, name) == 0) {
        return true;
    }
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/net/%s", dev, name);
    return access(path, F_OK) == 0;
}

/* Opens a device's port and logs it; FX_OK when it is usable (active). */
static fx_status try_port(struct ibv_device *d, int port, bool named, struct ibv_context **out,
                          struct ibv_port_attr *pa)
{
    const char *name        = ibv_get_device_name(d);
    struct ibv_context *ctx = ibv_open_device(d);

    if (ctx == NULL) {
        fx_warn(FX_SUB_NET, "verbs: cannot open %s: %s", name, strerror(errno));
        return FX_ERR_CONNECTION;
    }
    memset(pa, 0, sizeof(*pa));
    if (ibv_query_port(ctx, (uint8_t)port, pa) != 0) {
        if (named) {
            fx_warn(FX_SUB_NET, "verbs: %s has no port %d", name, port);
        }
        ibv_close_device(ctx);
        return FX_ERR_CONNECTION;
    }
    if (pa->state != IBV_PORT_ACTIVE) {
        fx_warn(FX_SUB_NET, "verbs: %s port %d is %s: skipped", name, port,
                ibv_port_state_str(pa->state));
        ibv_close_device(ctx);
        return FX_ERR_CONNECTION;
    }
    fx_info(FX_SUB_NET,
            "verbs: %s port %d: %s, active MTU %d, %.1f Gb/s (%dx %.1f Gb/s), link layer %s", name,
            port, ibv_port_state_str(pa->state), mtu_bytes(pa->active_mtu),
            lane_gbps(pa->active_speed) * width_lanes(pa->active_width),
            width_lanes(pa->active_width), lane_gbps(pa->active_speed),
            link_layer_str(pa->link_layer));
    *out = ctx;
    return FX_OK;
}

/*
 * Chooses the HCA: the first usable entry of FX_IB_HCA, else the NIC the core found nearest
 * when it is an RDMA device, else the first device with an active port. An FX_IB_HCA that
 * names no usable port is an error.
 */
static fx_status choose_device(struct fx_tp *tp, const struct fx_tp_config *cfg,
                               struct ibv_context **ctx, struct ibv_port_attr *pa)
{
    int n                    = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    char names[256]          = "";
    fx_status st             = FX_ERR_CONNECTION;

    *ctx = NULL;
    if (list == NULL || n == 0) {
        if (list != NULL) {
            ibv_free_device_list(list);
        }
        fx_warn(FX_SUB_NET, "verbs: no RDMA device found (ibv_get_device_list: %s)",
                n == 0 ? "empty" : strerror(errno));
        return FX_ERR_UNSUPPORTED;
    }
    for (int i = 0; i < n; i++) {
        size_t used = strlen(names);

        snprintf(names + used, sizeof(names) - used, "%s%s", i ? ", " : "",
                 ibv_get_device_name(list[i]));
    }
    if (cfg->ib_hca != NULL && cfg->ib_hca[0] != '\0') {
        char spec[256];
        char *save = NULL;

        snprintf(spec, sizeof(spec), "%s", cfg->ib_hca);
        for (char *e = strtok_r(spec, ",", &save); e != NULL && st != FX_OK;
             e       = strtok_r(NULL, ",", &save)) {
            char *colon = strchr(e, ':');
            int port    = 1;
            bool found  = false;

            if (colon != NULL) {
                char *end = NULL;

                *colon = '\0';
                port   = (int)strtol(colon + 1, &end, 10);
                if (end == colon + 1 || *end != '\0' || port < 1 || port > 255) {
                    fx_warn(FX_SUB_NET, "FX_IB_HCA=%s: bad port in '%s:%s'", cfg->ib_hca, e,
                            colon + 1);
                    ibv_free_device_list(list);
                    return FX_ERR_INVALID_ARG;
                }
            }
            for (int i = 0; i < n && st != FX_OK; i++) {
                if (device_is(ibv_get_device_name(list[i]), e)) {
                    found    = true;
                    st       = try_port(list[i], port, true, ctx, pa);
                    tp->port = port;
                    snprintf(tp->hca, sizeof(tp->hca), "%s", ibv_get_device_name(list[i]));
                }
            }
            if (!found) {
                fx_warn(FX_SUB_NET, "FX_IB_HCA: no RDMA device named %s (devices: %s)", e, names);
            }
        }
        if (st != FX_OK) {
            fx_warn(FX_SUB_NET, "FX_IB_HCA=%s names no usable RDMA port (devices: %s)", cfg->ib_hca,
                    names);
            ibv_free_device_list(list);
            return FX_ERR_INVALID_ARG;
        }
        ibv_free_device_list(list);
        return FX_OK;
    }
    if (cfg->ib_near != NULL && cfg->ib_near[0] != '\0') {
        for (int i = 0; i < n && st != FX_OK; i++) {
            if (device_is(ibv_get_device_name(list[i]), cfg->ib_near)) {
                st       = try_port(list[i], 1, false, ctx, pa);
                tp->port = 1;
                snprintf(tp->hca, sizeof(tp->hca), "%s", ibv_get_device_name(list[i]));
            }
        }
    }
    for (int i = 0; i < n && st != FX_OK; i++) {
        st       = try_port(list[i], 1, false, ctx, pa);
        tp->port = 1;
        snprintf(tp->hca, sizeof(tp->hca), "%s", ibv_get_device_name(list[i]));
    }
    ibv_free_device_list(list);
    if (st != FX_OK) {
        fx_warn(FX_SUB_NET, "verbs: no RDMA device with an active port 1 (devices: %s)", names);
        return FX_ERR_UNSUPPORTED;
    }
    return FX_OK;
}

/*
 * The addresses to listen on: those of the HCA's netdevs (sysfs), else those that
 * FX_SOCKET_IFNAME selects (the TCP transport's rules).
 */
static fx_status local_addrs(struct fx_tp *tp, const struct fx_tp_config *cfg)
{
    char path[300];
    DIR *dir;
    struct dirent *de;
    char(*names)[FX_TCP_IFNAME_LEN] = calloc(VB_MAX_ADDRS, FX_TCP_IFNAME_LEN);
    fx_status st                    = FX_OK;

    if (names == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    tp->nlocal = 0;
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/net", tp->hca);
    dir = tp->hca[0] != '\0' ? opendir(path) : NULL;
    if (dir != NULL) {
        struct ifaddrs *ifa = NULL;

        if (getifaddrs(&ifa) == 0) {
            for (int fam = 0; fam < 2; fam++) {
                rewinddir(dir);
                while ((de = readdir(dir)) != NULL) {
                    for (struct ifaddrs *i = ifa; i != NULL && tp->nlocal < VB_MAX_ADDRS;
                         i                 = i->ifa_next) {
                        int want = fam == 0 ? AF_INET : AF_INET6;

                        if (i->ifa_addr == NULL || i->ifa_addr->sa_family != want ||
                            strcmp(i->ifa_name, de->d_name) != 0) {
                            continue;
                        }
                        if (want == AF_INET6 &&
                            IN6_IS_ADDR_LINKLOCAL(
                                &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr)) {
                            continue;
                        }
                        memcpy(&tp->local[tp->nlocal++], i->ifa_addr,
                               want == AF_INET ? sizeof(struct sockaddr_in)
                                               : sizeof(struct sockaddr_in6));
                    }
                }
            }
            freeifaddrs(ifa);
        }
        closedir(dir);
    }
    if (tp->nlocal == 0) {
        st = fx_tcp_iface_list(cfg->ifname, tp->local, names, VB_MAX_ADDRS, &tp->nlocal);
    }
    free(names);
    if (st != FX_OK) {
        fx_warn(FX_SUB_NET, "verbs: FX_SOCKET_IFNAME=%s is malformed", cfg->ifname);
        return st;
    }
    if (tp->nlocal == 0) {
        fx_warn(FX_SUB_NET, "verbs: no IP address to listen on (%s%s)",
                tp->hca[0] ? "no netdev address of " : "FX_SOCKET_IFNAME=",
                tp->hca[0] ? tp->hca : (cfg->ifname ? cfg->ifname : "(default)"));
        return FX_ERR_CONNECTION;
    }
    return FX_OK;
}

/* ------------------------------------------------------------------ instance */

static void vb_fini(struct fx_tp *tp);

static fx_status vb_init(const struct fx_tp_config *cfg, struct fx_tp **out)
{
    struct fx_tp *tp        = calloc(1, sizeof(*tp));
    struct ibv_context *ctx = NULL;
    struct ibv_port_attr pa;
    struct epoll_event ev = {.events = EPOLLIN};
    fx_status st;

    if (tp == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    tp->efd           = -1;
    tp->timeout_ms    = cfg->timeout_ms > 0 ? cfg->timeout_ms : 30000;
    tp->nqp           = cfg->ib_qps > 0 ? (unsigned)cfg->ib_qps : 2;
    tp->tos           = cfg->ib_tc;
    tp->sl            = cfg->ib_sl;
    tp->reg_cache_max = cfg->reg_cache_max;
    if (tp->nqp > VB_MAX_QPS) {
        fx_warn(FX_SUB_NET, "FX_IB_QPS_PER_CONN=%u: at most %d", tp->nqp, VB_MAX_QPS);
        free(tp);
        return FX_ERR_INVALID_ARG;
    }
    st = choose_device(tp, cfg, &ctx, &pa);
    if (st == FX_OK) {
        st = local_addrs(tp, cfg);
    }
    if (st == FX_OK) {
        st = fx_vb_gid_choose(tp, ctx, &pa, cfg->ib_gid_index);
    }
    if (ctx != NULL) {
        ibv_close_device(ctx);
    }
    if (st != FX_OK) {
        free(tp);
        return st;
    }
    tp->efd = epoll_create1(EPOLL_CLOEXEC);
    tp->ec  = rdma_create_event_channel();
    if (tp->efd < 0 || tp->ec == NULL) {
        fx_warn(FX_SUB_NET, "verbs: cannot create the rdma_cm event channel: %s", strerror(errno));
        vb_fini(tp);
        return FX_ERR_CONNECTION;
    }
    (void)fcntl(tp->ec->fd, F_SETFL, fcntl(tp->ec->fd, F_GETFL) | O_NONBLOCK);
    ev.data.ptr = NULL;
    if (epoll_ctl(tp->efd, EPOLL_CTL_ADD, tp->ec->fd, &ev) != 0) {
        fx_warn(FX_SUB_NET, "verbs: epoll_ctl: %s", strerror(errno));
        vb_fini(tp);
        return FX_ERR_CONNECTION;
    }
    fx_info(FX_SUB_NET, "verbs: device %s port %d, %u QPs per connection", tp->hca, tp->port,
            tp->nqp);
    *out = tp;
    return FX_OK;
}

static void vb_fini(struct fx_tp *tp)
{
    while (tp->conns != NULL) { /* connections the caller dropped half-made */
        fx_vb_close(tp->conns);
    }
    while (tp->devs != NULL) {
        struct vb_dev *d = tp->devs;

        tp->devs = d->next;
        if (d->rc != NULL) {
            struct fx_rcache_stats st;

            fx_rcache_stats(d->rc, &st);
            fx_trace(FX_SUB_NET,
                     "verbs: registration cache of %s: %llu hits, %llu misses, %llu evictions, "
                     "%llu invalidations",
                     ibv_get_device_name(d->ctx->device), (unsigned long long)st.hits,
                     (unsigned long long)st.misses, (unsigned long long)st.evictions,
                     (unsigned long long)st.invalidations);
            fx_rcache_destroy(d->rc); /* every MR before the PD */
        }
        ibv_destroy_comp_channel(d->chan);
        ibv_dealloc_pd(d->pd);
        free(d);
    }
    if (tp->ec != NULL) {
        rdma_destroy_event_channel(tp->ec);
    }
    while (tp->free_reqs != NULL) {
        struct fx_tp_req *r = tp->free_reqs;

        tp->free_reqs = r->next;
        free(r);
    }
    if (tp->efd >= 0) {
        close(tp->efd);
    }
    free(tp);
}

/* ------------------------------------------------------------------ requests */

static struct fx_tp_req *req_get(struct fx_tp_conn *c, bool send)
{
    struct fx_tp_req *r = c->tp->free_reqs;

    if (r != NULL) {
        c->tp->free_reqs = r->next;
    } else {
        r = malloc(sizeof(*r));
        if (r == NULL) {
            return NULL;
        }
    }
    memset(r, 0, sizeof(*r));
    r->conn   = c;
    r->send   = send;
    r->state  = RQ_QUEUED;
    r->status = FX_INPROGRESS;
    r->slot   = -1;
    return r;
}

static void req_put(struct fx_tp *tp, struct fx_tp_req *r)
{
    vb_unreg(&r->reg);
    r->next       = tp->free_reqs;
    tp->free_reqs = r;
}

/* Frees every request of a closing connection: queued, or finished and not tested. */
void fx_vb_conn_reqs_free(struct fx_tp_conn *c)
{
    struct req_queue *qs[2] = {&c->sendq, &c->recvq};

    for (int d = 0; d < 2; d++) {
        while (qs[d]->head != NULL) {
            struct fx_tp_req *r = qs[d]->head;

            qs[d]->head = r->next;
            req_put(c->tp, r);
        }
        qs[d]->tail = NULL;
    }
    while (c->done != NULL) {
        struct fx_tp_req *r = c->done;

        c->done = r->dnext;
        req_put(c->tp, r);
    }
    memset(c->stage_req, 0, sizeof(c->stage_req));
}

/* Done requests leave the head of their queue, in order (test() then returns their status). */
static void queue_update(struct req_queue *q)
{
    while (q->head != NULL && q->head->state == RQ_DONE) {
        struct fx_tp_req *r = q->head;

        q->head = r->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        r->next     = NULL;
        r->finished = true; /* test() hands it back */
        r->dprev    = NULL;
        r->dnext    = r->conn->done;
        if (r->dnext != NULL) {
            r->dnext->dprev = r;
        }
        r->conn->done = r;
    }
}

static void req_done(struct fx_tp_req *r, fx_status st)
{
    if (r->state == RQ_DONE) {
        return;
    }
    r->state  = RQ_DONE;
    r->status = st;
    if (r->send && r->slot >= 0 && r->conn->stage_req[r->slot] == r) {
        r->conn->stage_req[r->slot] = NULL; /* its slot's completion may still come */
    }
    r->slot = -1;
    vb_unreg(&r->reg);
}

/* ------------------------------------------------------------------ failure */

void fx_vb_conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
{
    struct req_queue *qs[2] = {&c->sendq, &c->recvq};
    va_list ap;

    if (c->failed != FX_OK) {
        return;
    }
    c->failed = status;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    fx_info(FX_SUB_NET, "verbs: %s", c->error);
    for (int d = 0; d < 2; d++) {
        for (struct fx_tp_req *r = qs[d]->head; r != NULL; r = r->next) {
            req_done(r, status == FX_ERR_MISMATCH ? FX_ERR_CONNECTION : status);
        }
        queue_update(qs[d]);
    }
    for (unsigned i = 0; i < c->nqp; i++) { /* our QPs stop; the peer learns */
        if (c->qp[i].id != NULL && c->qp[i].established) {
            fx_vb_qp_stop(&c->qp[i]);
            rdma_disconnect(c->qp[i].id);
        }
    }
}

/*
 * The peer disconnected: what already arrived is still received; sends, and receives that
 * wait for data, fail.
 */
void fx_vb_peer_gone(struct fx_tp_conn *c)
{
    if (c->peer_gone || c->failed != FX_OK) {
        return;
    }
    fx_vb_poll_conn(c); /* what landed before the disconnect */
    if (c->failed != FX_OK) {
        return;
    }
    c->peer_gone = true;
    if (c->error[0] == '\0') {
        snprintf(c->error, sizeof(c->error), "%s disconnected", c->peer);
    }
    fx_info(FX_SUB_NET, "verbs: %s", c->error);
    for (struct fx_tp_req *r = c->sendq.head; r != NULL; r = r->next) {
        req_done(r, FX_ERR_PEER_FAILED);
    }
    for (struct fx_tp_req *r = c->recvq.head; r != NULL; r = r->next) {
        if (r->state == RQ_WRITING) { /* its data can no longer come */
            req_done(r, FX_ERR_PEER_FAILED);
        }
    }
    queue_update(&c->sendq);
    fx_vb_poll_conn(c); /* matches the receives, fails the rest */
}

/* ------------------------------------------------------------------ buffers and posting */

static size_t slot_offset(unsigned i)
{
    return i < VB_SLOTS ? (size_t)i * VB_SLOT_SIZE
                        : (size_t)VB_SLOTS * VB_SLOT_SIZE + (size_t)(i - VB_SLOTS) * VB_CSLOT_SIZE;
}

static uint8_t *ring_slot(uint8_t *base, unsigned i)
{
    return base + slot_offset(i);
}

fx_status fx_vb_conn_buffers(struct fx_tp_conn *c)
{
    size_t len = VB_RING_LEN;

    c->ring  = aligned_alloc(4096, (len + 4095) / 4096 * 4096);
    c->stage = aligned_alloc(4096, (len + 4095) / 4096 * 4096);
    if (c->ring == NULL || c->stage == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    memset(c->ring, 0, len);
    memset(c->stage, 0, len);
    c->ring_mr =
        ibv_reg_mr(c->dev->pd, c->ring, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    c->stage_mr = ibv_reg_mr(c->dev->pd, c->stage, len, IBV_ACCESS_LOCAL_WRITE);
    if (c->ring_mr == NULL || c->stage_mr == NULL) {
        fx_warn(FX_SUB_NET, "verbs: cannot register the rings of a connection: %s",
                strerror(errno));
        return FX_ERR_CONNECTION;
    }
    c->cq_size = c->nqp * (VB_SQ_DEPTH + VB_RQ_DEPTH);
    c->cq      = ibv_create_cq(c->dev->ctx, (int)c->cq_size, c, c->dev->chan, 0);
    if (c->cq == NULL) {
        fx_warn(FX_SUB_NET, "verbs: cannot create a CQ of %u entries: %s", c->cq_size,
                strerror(errno));
        return FX_ERR_CONNECTION;
    }
    c->credits  = VB_SLOTS;
    c->ccredits = VB_CSLOTS;
    return FX_OK;
}

/* Frees what fx_vb_conn_buffers made; the QPs are gone by now. */
void fx_vb_conn_release(struct fx_tp_conn *c)
{
    if (c->cq != NULL) {
        struct ibv_wc wc[VB_POLL_BATCH];
        struct ibv_cq *cq;
        void *ctx;

        while (ibv_poll_cq(c->cq, VB_POLL_BATCH, wc) > 0) {
        }
        /* every event of the channel read and acknowledged before the CQ goes */
        for (int i = 0; i < 1024 && ibv_get_cq_event(c->dev->chan, &cq, &ctx) == 0; i++) {
            ibv_ack_cq_events(cq, 1);
        }
        if (ibv_destroy_cq(c->cq) != 0) {
            fx_warn(FX_SUB_NET, "verbs: ibv_destroy_cq: %s", strerror(errno));
        }
        c->cq = NULL;
    }
    if (c->ring_mr != NULL) {
        ibv_dereg_mr(c->ring_mr);
    }
    if (c->stage_mr != NULL) {
        ibv_dereg_mr(c->stage_mr);
    }
    c->ring_mr  = NULL;
    c->stage_mr = NULL;
    free(c->ring);
    free(c->stage);
    c->ring  = NULL;
    c->stage = NULL;
}

void fx_vb_post_recvs(struct vb_qp *q, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        struct ibv_sge none   = {0}; /* zero-length: a pointer all the same */
        struct ibv_recv_wr wr = {
            .wr_id = WRID(WR_RECV, q->index, 0), .sg_list = &none, .num_sge = 0};
        struct ibv_recv_wr *bad = NULL;
        int rc                  = ibv_post_recv(q->qp, &wr, &bad);

        if (rc != 0) {
            fx_vb_conn_fail(q->conn, FX_ERR_CONNECTION, "cannot post a receive to %s: %s",
                            q->conn->peer, strerror(rc));
            return;
        }
    }
}

/* Posts one RDMA_WRITE_WITH_IMM on QP qi; false (the connection failed) when it could not. */
static bool post_write(struct fx_tp_conn *c, unsigned qi, uint64_t wrid, const void *src,
                       uint32_t len, uint32_t lkey, uint64_t raddr, uint32_t rkey, uint32_t imm)
{
    struct vb_qp *q         = &c->qp[qi];
    struct ibv_sge sge      = {.addr = (uintptr_t)src, .length = len, .lkey = lkey};
    struct ibv_send_wr wr   = {0};
    struct ibv_send_wr *bad = NULL;
    int rc;

    wr.wr_id               = wrid;
    wr.opcode              = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.send_flags          = IBV_SEND_SIGNALED | (len <= q->max_inline ? IBV_SEND_INLINE : 0);
    wr.imm_data            = htonl(imm);
    wr.sg_list             = &sge;
    wr.num_sge             = len > 0 ? 1 : 0;
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey        = rkey;
    rc                     = ibv_post_send(q->qp, &wr, &bad);
    if (rc != 0) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "cannot post a write to %s: %s", c->peer,
                        strerror(rc));
        return false;
    }
    q->sq_used++;
    return true;
}

static bool sq_room(const struct fx_tp_conn *c, unsigned qi)
{
    return c->qp[qi].sq_used < c->qp[qi].sq_max;
}

/* Writes stage slot `s` (control slots: index >= VB_SLOTS) to the same slot of the peer's ring. */
static bool write_slot(struct fx_tp_conn *c, unsigned s, size_t len)
{
    uint8_t *src = ring_slot(c->stage, s);

    return post_write(c, 0, WRID(WR_SLOT, 0, s), src, (uint32_t)len, c->stage_mr->lkey,
                      c->peer_ring + slot_offset(s), c->peer_rkey, IMM(IMM_SLOT, s));
}

/* A user ring slot for the next message: the peer's next slot in order, with a credit. */
static int take_slot(struct fx_tp_conn *c)
{
    unsigned s = c->peer_slot;

    if (c->credits == 0 || c->stage_busy[s] || !sq_room(c, 0)) {
        return -1;
    }
    c->credits--;
    c->peer_slot     = (s + 1) % VB_SLOTS;
    c->stage_busy[s] = true;
    return (int)s;
}

/* A control slot: the peer consumes them on arrival, so they come back in order too. */
static int take_cslot(struct fx_tp_conn *c)
{
    unsigned s = VB_SLOTS + c->peer_cslot;

    if (c->ccredits == 0 || c->stage_busy[s] || !sq_room(c, 0)) {
        return -1;
    }
    c->ccredits--;
    c->peer_cslot    = (c->peer_cslot + 1) % VB_CSLOTS;
    c->stage_busy[s] = true;
    return (int)s;
}

static void frame(uint8_t *f, unsigned kind, size_t hdrlen, uint32_t id, uint64_t len)
{
    memset(f, 0, VB_FRAME);
    f[0] = (uint8_t)kind;
    f[1] = (uint8_t)hdrlen;
    put32(f + 4, id);
    put64(f + 8, len);
}

bool fx_vb_send_hello(struct fx_tp_conn *c)
{
    int s = take_slot(c);
    uint8_t *f;

    if (s < 0) {
        return false;
    }
    f = ring_slot(c->stage, (unsigned)s);
    frame(f, SLOT_HELLO, 0, 0, c->hello_len);
    if (c->hello_len > 0) {
        memcpy(f + VB_FRAME, c->hello, c->hello_len);
    }
    c->stage_req[s] = NULL;
    return write_slot(c, (unsigned)s, VB_FRAME + c->hello_len);
}

/* ------------------------------------------------------------------ sends */

/* How a large payload is split: parts of at least VB_SPLIT_MIN over the QPs, each at most
 * VB_WR_MAX. */
static unsigned nparts(const struct fx_tp_conn *c, uint64_t len)
{
    uint64_t n = (len + VB_SPLIT_MIN - 1) / VB_SPLIT_MIN;
    uint64_t m = (len + VB_WR_MAX - 1) / VB_WR_MAX;

    n = n < c->nqp ? n : c->nqp;
    return (unsigned)(m > n ? m : n);
}

static void part(uint64_t len, unsigned n, unsigned i, uint64_t *off, uint64_t *plen)
{
    uint64_t each = (len / n + 4095) / 4096 * 4096;

    *off  = each * i < len ? each * i : len;
    *plen = *off + each < len ? each : len - *off;
}

/* Starts the first sends of the queue that can go: eager writes, RTS. In order. */
static void sends_start(struct fx_tp_conn *c)
{
    for (struct fx_tp_req *r = c->sendq.head; r != NULL && c->failed == FX_OK; r = r->next) {
        uint8_t *f;
        int s;
        bool eager = r->hdrlen + r->len <= VB_EAGER_MAX;

        if (r->state != RQ_QUEUED) {
            continue;
        }
        s = take_slot(c);
        if (s < 0) {
            return;
        }
        f = ring_slot(c->stage, (unsigned)s);
        frame(f, eager ? SLOT_EAGER : SLOT_RTS, r->hdrlen, r->id, r->len);
        if (r->hdrlen > 0) {
            memcpy(f + VB_FRAME, r->hdr, r->hdrlen);
        }
        if (eager && r->len > 0) {
            memcpy(f + VB_FRAME + r->hdrlen, r->buf, r->len);
        }
        c->stage_req[s] = r;
        r->slot         = s;
        r->state        = eager ? RQ_WRITING : RQ_WAIT_CTS;
        r->pending      = eager ? 1 : 0;
        r->start_ns     = fx_now_us() * 1000;
        if (!write_slot(c, (unsigned)s, VB_FRAME + r->hdrlen + (eager ? r->len : 0))) {
            return;
        }
    }
}

/* Posts the parts of large payloads whose CTS arrived, as far as the send queues allow. */
static void sends_write(struct fx_tp_conn *c)
{
    for (struct fx_tp_req *r = c->sendq.head; r != NULL && c->failed == FX_OK; r = r->next) {
        unsigned n;

        if (r->state != RQ_WRITING || r->hdrlen + r->len <= VB_EAGER_MAX) {
            continue;
        }
        n = nparts(c, r->len);
        while (r->nextpart < n) {
            unsigned qi = r->nextpart % c->nqp;
            uint64_t off, plen;

            if (!sq_room(c, qi)) {
                break;
            }
            part(r->len, n, r->nextpart, &off, &plen);
            if (!post_write(c, qi, WRID(WR_DATA, qi, (uintptr_t)r), r->buf + off, (uint32_t)plen,
                            r->reg.mr->lkey, r->raddr + off, r->rkey, IMM(IMM_DATA, r->id))) {
                return;
            }
            r->pending++;
            r->nextpart++;
        }
    }
}

static void cts_arrived(struct fx_tp_conn *c, const uint8_t *f)
{
    uint32_t id = get32(f + 4);

    for (struct fx_tp_req *r = c->sendq.head; r != NULL; r = r->next) {
        if (r->state == RQ_WAIT_CTS && (r->id & 0x0fffffffu) == id) {
            if (get64(f + 8) != r->len) {
                fx_vb_conn_fail(c, FX_ERR_CONNECTION,
                                "%s sent a clear-to-send of %llu bytes for a %zu-byte message",
                                c->peer, (unsigned long long)get64(f + 8), r->len);
                return;
            }
            r->raddr = get64(f + 16);
            r->rkey  = get32(f + 24);
            r->state = RQ_WRITING;
            return;
        }
    }
    fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s sent a clear-to-send for no message (%u)", c->peer,
                    (unsigned)id);
}

/* ------------------------------------------------------------------ receives */

/* Returns consumed ring slots in order as credits. */
static void slot_free(struct fx_tp_conn *c, unsigned s)
{
    c->slot_full[s] = false;
    while (c->reported != c->arrivals && !c->slot_full[c->reported % VB_SLOTS]) {
        c->reported++;
        c->credits_owed++;
    }
}

static bool recv_mismatch(struct fx_tp_conn *c, struct fx_tp_req *r, const uint8_t *f)
{
    size_t hdrlen = f[1];
    uint64_t len  = get64(f + 8);

    if (hdrlen == r->hdrlen && len == r->len) {
        return false;
    }
    if (hdrlen > 0 && r->hdrlen > 0) {
        memcpy(r->user_hdr, f + VB_FRAME, hdrlen < r->hdrlen ? hdrlen : r->hdrlen);
    }
    req_done(r, FX_ERR_MISMATCH);
    fx_vb_conn_fail(c, FX_ERR_MISMATCH,
                    "message from %s has a %zu-byte header and %llu payload bytes; the receive "
                    "expected %zu and %zu",
                    c->peer, hdrlen, (unsigned long long)len, r->hdrlen, r->len);
    return true;
}

/* Matches arrived messages with posted receives, in order. */
static void recvs_match(struct fx_tp_conn *c)
{
    for (struct fx_tp_req *r = c->recvq.head; r != NULL && c->failed == FX_OK; r = r->next) {
        uint8_t *f;
        unsigned s;

        if (r->state != RQ_QUEUED) {
            continue;
        }
        if (c->matched == c->arrivals) { /* slots are consumed in order: matched is the next */
            if (c->peer_gone) {
                req_done(r, FX_ERR_PEER_FAILED);
                continue;
            }
            return;
        }
        s = c->matched % VB_SLOTS;
        f = ring_slot(c->ring, s);
        if (get32(f + 4) != (c->next_recv_id & 0x0fffffffu)) {
            fx_vb_conn_fail(c, FX_ERR_CONNECTION,
                            "%s: message %u arrived where message %u was due (ring slot %u)",
                            c->peer, (unsigned)get32(f + 4),
                            (unsigned)(c->next_recv_id & 0x0fffffffu), s);
            return;
        }
        if (recv_mismatch(c, r, f)) {
            return;
        }
        if (r->hdrlen > 0) {
            memcpy(r->user_hdr, f + VB_FRAME, r->hdrlen);
        }
        if (f[0] == SLOT_EAGER) {
            if (r->len > 0) {
                memcpy(r->buf, f + VB_FRAME + r->hdrlen, r->len);
            }
            req_done(r, FX_OK);
            slot_free(c, s);
            c->matched++; /* consumed: the next message is due */
            c->next_recv_id++;
            continue;
        }
        if (c->peer_gone) { /* an RTS whose data cannot come any more */
            req_done(r, FX_ERR_PEER_FAILED);
            slot_free(c, s);
            c->matched++; /* consumed: the next message is due */
            c->next_recv_id++;
            continue;
        }
        {
            int cs = take_cslot(c);
            uint8_t *o;

            if (cs < 0) {
                return; /* the CTS waits for a control credit */
            }
            if (!vb_reg(c, r->buf, r->len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
                        &r->reg)) {
                return;
            }
            r->id       = get32(f + 4) & 0x0fffffffu;
            r->pending  = nparts(c, r->len);
            r->state    = RQ_WRITING;
            r->start_ns = fx_now_us() * 1000;
            o           = ring_slot(c->stage, (unsigned)cs);
            frame(o, SLOT_CTS, r->hdrlen, r->id, r->len);
            put64(o + 16, (uintptr_t)r->buf);
            put32(o + 24, r->reg.mr->rkey);
            c->stage_req[cs] = NULL;
            slot_free(c, s);
            c->matched++; /* consumed: the next message is due */
            c->next_recv_id++;
            if (!write_slot(c, (unsigned)cs, VB_FRAME)) {
                return;
            }
        }
    }
}

static void data_arrived(struct fx_tp_conn *c, uint32_t id, uint32_t bytes)
{
    for (struct fx_tp_req *r = c->recvq.head; r != NULL; r = r->next) {
        if (r->state == RQ_WRITING && r->id == id) {
            (void)bytes;
            if (--r->pending == 0) {
                if (r->len >= (64u << 10)) {
                    c->recv_bytes += r->len;
                    c->recv_ns += (uint64_t)(fx_now_us() * 1000 - r->start_ns);
                }
                req_done(r, FX_OK);
            }
            return;
        }
    }
    fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s wrote data for no receive (%u)", c->peer,
                    (unsigned)id);
}

/* A ring slot landed (in order on QP 0). */
static void slot_arrived(struct fx_tp_conn *c, unsigned s)
{
    uint8_t *f;

    if (s >= VB_SLOTS + VB_CSLOTS) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s wrote to slot %u of a %d-slot ring", c->peer, s,
                        VB_SLOTS + VB_CSLOTS);
        return;
    }
    f = ring_slot(c->ring, s);
    if (s >= VB_SLOTS) { /* control: consumed at once */
        c->ccredits_owed++;
        if (f[0] == SLOT_CTS) {
            cts_arrived(c, f);
        } else {
            fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s wrote a control slot of kind %u", c->peer,
                            f[0]);
        }
        return;
    }
    if (s != c->arrivals % VB_SLOTS || c->slot_full[s]) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s wrote ring slot %u out of order", c->peer, s);
        return;
    }
    c->slot_full[s] = true;
    c->arrivals++;
    if (f[0] == SLOT_HELLO) {
        size_t n = get64(f + 8);

        if (!c->acceptor || c->hello_seen || n > FX_TP_HELLO_MAX || c->arrivals != 1) {
            fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s sent an unexpected hello", c->peer);
            return;
        }
        memcpy(c->hello, f + VB_FRAME, n);
        c->hello_len  = n;
        c->hello_seen = true;
        slot_free(c, s);
        c->matched++; /* the first arrival: consumed here, so matching starts after it */
    } else if ((f[0] != SLOT_EAGER && f[0] != SLOT_RTS) || f[1] > FX_TP_HDR_MAX ||
               (f[0] == SLOT_EAGER && f[1] + get64(f + 8) > VB_EAGER_MAX)) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s wrote a malformed message (kind %u)", c->peer,
                        f[0]);
    }
}

/* ------------------------------------------------------------------ completions */

static void send_completed(struct fx_tp_conn *c, uint64_t wrid)
{
    unsigned qi = WRID_QP(wrid);

    if (qi < c->nqp && c->qp[qi].sq_used > 0) {
        c->qp[qi].sq_used--;
    }
    switch (WRID_KIND(wrid)) {
    case WR_SLOT: {
        unsigned s          = (unsigned)WRID_VAL(wrid);
        struct fx_tp_req *r = s < VB_SLOTS + VB_CSLOTS ? c->stage_req[s] : NULL;

        if (s < VB_SLOTS + VB_CSLOTS) {
            c->stage_busy[s] = false;
            c->stage_req[s]  = NULL;
        }
        if (r != NULL) {
            r->slot = -1;
            if (r->state == RQ_WRITING && r->hdrlen + r->len <= VB_EAGER_MAX) {
                c->bytes_sent += VB_FRAME + r->hdrlen + r->len;
                c->busy_ns += (uint64_t)(fx_now_us() * 1000 - r->start_ns);
                req_done(r, FX_OK);
            }
        }
        break;
    }
    case WR_DATA: {
        struct fx_tp_req *r = (struct fx_tp_req *)(uintptr_t)WRID_VAL(wrid);

        for (struct fx_tp_req *q = c->sendq.head; q != NULL; q = q->next) {
            if (q == r && r->state == RQ_WRITING && r->pending > 0) {
                if (--r->pending == 0 && r->nextpart == nparts(c, r->len)) {
                    c->bytes_sent += r->len;
                    c->busy_ns += (uint64_t)(fx_now_us() * 1000 - r->start_ns);
                    req_done(r, FX_OK);
                }
                break;
            }
        }
        break;
    }
    default:
        break;
    }
}

static void recv_completed(struct fx_tp_conn *c, const struct ibv_wc *wc)
{
    uint32_t imm = ntohl(wc->imm_data);
    unsigned qi  = WRID_QP(wc->wr_id);

    if (qi < c->nqp) {
        fx_vb_post_recvs(&c->qp[qi], 1);
    }
    if (!(wc->wc_flags & IBV_WC_WITH_IMM)) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s sent a message without immediate data", c->peer);
        return;
    }
    switch (IMM_KIND(imm)) {
    case IMM_SLOT:
        slot_arrived(c, IMM_VAL(imm));
        break;
    case IMM_CREDIT:
        c->credits += IMM_VAL(imm) & 0xffffu;
        c->ccredits += IMM_VAL(imm) >> 16;
        break;
    case IMM_DATA:
        data_arrived(c, IMM_VAL(imm), wc->byte_len);
        break;
    default:
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s sent immediate data of unknown kind %u", c->peer,
                        IMM_KIND(imm));
    }
}

/* Sends the credits owed to the peer (a 4-byte write to its credit word, with immediate data). */
static void credits_return(struct fx_tp_conn *c)
{
    if ((c->credits_owed == 0 && c->ccredits_owed == 0) || !sq_room(c, 0) || c->peer_gone) {
        return;
    }
    if (post_write(c, 0, WRID(WR_CREDIT, 0, 0), c->stage + VB_CREDIT_OFF, 4, c->stage_mr->lkey,
                   c->peer_ring + VB_CREDIT_OFF, c->peer_rkey,
                   IMM(IMM_CREDIT, c->credits_owed | c->ccredits_owed << 16))) {
        c->credits_owed  = 0;
        c->ccredits_owed = 0;
    }
}

/* Polls the connection's CQ and moves its requests; the first real error fails it. */
int fx_vb_poll_conn(struct fx_tp_conn *c)
{
    struct ibv_wc wc[VB_POLL_BATCH];
    int n, total = 0;

    if (c->cq == NULL) {
        return 0;
    }
    for (int round = 0; round < 16; round++) {
        n = ibv_poll_cq(c->cq, VB_POLL_BATCH, wc);
        if (n <= 0) {
            break;
        }
        total += n;
        for (int i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) {
                unsigned qi = WRID_QP(wc[i].wr_id);

                if (WRID_KIND(wc[i].wr_id) != WR_RECV && qi < c->nqp && c->qp[qi].sq_used > 0) {
                    c->qp[qi].sq_used--;
                }
                if (wc[i].status == IBV_WC_WR_FLUSH_ERR) {
                    continue; /* the QP is in error: the cause comes first, or a disconnect */
                }
                fx_vb_conn_fail(c,
                                wc[i].status == IBV_WC_RETRY_EXC_ERR ? FX_ERR_PEER_FAILED
                                                                     : FX_ERR_CONNECTION,
                                "%s (QP %u of %u): %s (vendor error 0x%x)", c->peer, qi, c->nqp,
                                ibv_wc_status_str(wc[i].status), wc[i].vendor_err);
                continue;
            }
            if (c->failed != FX_OK) {
                continue;
            }
            if (wc[i].opcode == IBV_WC_RECV_RDMA_WITH_IMM || wc[i].opcode == IBV_WC_RECV) {
                recv_completed(c, &wc[i]);
            } else {
                send_completed(c, wc[i].wr_id);
            }
        }
        if (n < VB_POLL_BATCH) {
            break;
        }
    }
    if (c->failed == FX_OK && c->peer_ring != 0) {
        recvs_match(c);
        if (!c->peer_gone) {
            sends_start(c);
            sends_write(c);
            credits_return(c);
        }
    }
    queue_update(&c->sendq);
    queue_update(&c->recvq);
    return total;
}

/* ------------------------------------------------------------------ ops */

static fx_status vb_progress(struct fx_tp *tp)
{
    for (struct vb_dev *d = tp->devs; d != NULL; d = d->next) {
        struct ibv_cq *cq;
        void *ctx;

        for (int i = 0; i < 64 && ibv_get_cq_event(d->chan, &cq, &ctx) == 0; i++) {
            ibv_ack_cq_events(cq, 1);
        }
    }
    fx_vb_cm_events(tp);
    for (struct fx_tp_conn *c = tp->conns, *next; c != NULL; c = next) {
        next = c->next;
        fx_vb_poll_conn(c);
        fx_vb_conn_check(c);
    }
    return FX_OK;
}

static int vb_wait_fd(struct fx_tp *tp)
{
    return tp->efd;
}

static bool vb_prepare_wait(struct fx_tp *tp)
{
    bool ready = false;

    for (struct fx_tp_conn *c = tp->conns; c != NULL; c = c->next) {
        if (c->cq == NULL) {
            continue;
        }
        if (ibv_req_notify_cq(c->cq, 0) != 0) {
            ready = true;
        }
        /* a completion that came before the arming raises no event: look once more */
        if (fx_vb_poll_conn(c) > 0) {
            ready = true;
        }
    }
    return ready;
}

static fx_status vb_isend(struct fx_tp_conn *c, const void *hdr, size_t hdrlen, const void *buf,
                          size_t len, struct fx_tp_req **out)
{
    struct fx_tp_req *r;

    if (hdrlen > FX_TP_HDR_MAX) {
        return FX_ERR_INVALID_ARG;
    }
    r = req_get(c, true);
    if (r == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    if (hdrlen > 0) {
        memcpy(r->hdr, hdr, hdrlen);
    }
    r->hdrlen = hdrlen;
    r->buf    = (uint8_t *)buf;
    r->len    = len;
    r->id     = c->next_send_id++ & 0x0fffffffu;
    queue_push(&c->sendq, r);
    *out = r;
    if (c->failed != FX_OK || c->peer_gone) {
        req_done(r, c->failed != FX_OK
                        ? (c->failed == FX_ERR_MISMATCH ? FX_ERR_CONNECTION : c->failed)
                        : FX_ERR_PEER_FAILED);
    } else if (hdrlen + len > VB_EAGER_MAX) {
        (void)vb_reg(c, (void *)buf, len, 0, &r->reg); /* read only: const buffers register */
    }
    if (r->state != RQ_DONE) {
        sends_start(c);
    }
    queue_update(&c->sendq);
    return FX_OK;
}

static fx_status vb_irecv(struct fx_tp_conn *c, void *hdr, size_t hdrlen, void *buf, size_t len,
                          struct fx_tp_req **out)
{
    struct fx_tp_req *r;

    if (hdrlen > FX_TP_HDR_MAX) {
        return FX_ERR_INVALID_ARG;
    }
    r = req_get(c, false);
    if (r == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    r->user_hdr = hdr;
    r->hdrlen   = hdrlen;
    r->buf      = buf;
    r->len      = len;
    queue_push(&c->recvq, r);
    *out = r;
    if (c->failed != FX_OK) {
        req_done(r, c->failed == FX_ERR_MISMATCH ? FX_ERR_CONNECTION : c->failed);
    } else {
        recvs_match(c);
    }
    queue_update(&c->recvq);
    return FX_OK;
}

static fx_status vb_test(struct fx_tp_req *r)
{
    fx_status st;

    if (!r->finished) {
        return FX_INPROGRESS;
    }
    st = r->status;
    if (r->dprev != NULL) {
        r->dprev->dnext = r->dnext;
    } else {
        r->conn->done = r->dnext;
    }
    if (r->dnext != NULL) {
        r->dnext->dprev = r->dprev;
    }
    req_put(r->conn->tp, r);
    return st;
}

static void vb_conn_error(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->error[0] ? c->error : "no error");
}

static void vb_conn_peer(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->peer);
}

static bool vb_conn_stats(struct fx_tp_conn *c, struct fx_tp_conn_stats *st)
{
    st->bytes_acked = c->bytes_sent;
    st->busy_ns     = c->busy_ns;
    st->recv_bytes  = c->recv_bytes;
    st->recv_ns     = c->recv_ns;
    return true;
}

const struct fx_transport_ops fx_verbs_ops = {
    .name         = "verbs",
    .caps         = FX_TP_CAP_HOST_MEM,
    .init         = vb_init,
    .fini         = vb_fini,
    .progress     = vb_progress,
    .wait_fd      = vb_wait_fd,
    .prepare_wait = vb_prepare_wait,
    .listen       = fx_vb_listen,
    .listen_close = fx_vb_listen_close,
    .connect      = fx_vb_connect,
    .accept       = fx_vb_accept,
    .close        = fx_vb_close,
    .isend        = vb_isend,
    .irecv        = vb_irecv,
    .test         = vb_test,
    .conn_error   = vb_conn_error,
    .conn_peer    = vb_conn_peer,
    .conn_stats   = vb_conn_stats,
};
