/* A fake libibverbs for tests (docs/verbs.md, "The fake provider"): devices, PDs, MRs, CQs,
 * completion channels and RC QPs whose "wire" is a UNIX stream socket per connected QP pair.
 * Each opened device runs one NIC thread that serves all its QPs: it transmits posted work
 * requests, checks rkeys, bounds and access flags at the target against the target process's
 * registered memory, writes the data there, acknowledges, and generates completions in order.
 *
 * One lock per opened device (struct fv_ctx) guards every object of that device; the NIC thread
 * takes it for each round of work. Written from the libibverbs man pages and the IBTA rules
 * they cite (QP state transitions, RNR and retry counters, flush on error). */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#include "fakeverbs_private.h"

#undef ibv_get_device_list
#undef ibv_query_port
#undef ibv_reg_mr
#undef ibv_reg_mr_iova

#define FV_EXPORT    __attribute__((visibility("default")))
#define FV_MAX_DEVS  16
#define FV_MAX_QP_WR 16384
#define FV_MAX_SGE   30
#define FV_MAX_INL   256
#define FV_MAX_CQE   (1 << 22)
#define FV_MAX_MSG   (1u << 31)
#define FV_MAGIC     0x46564231u /* "FVB1" */
#define FV_MAX_GIDS  16

/* ---------------------------------------------------------------------------------------- */
/* Logging, configuration, faults */

static int g_debug = -1;
static long g_fault_bad_rkey;    /* the N-th posted RDMA write carries a corrupted rkey */
static long g_fault_starve_recv; /* receives after the N-th posted one are dropped */
static atomic_long g_rdma_writes;
static atomic_long g_recvs_posted;

static void fv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fv_log(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "fakeverbs[%d]: %s\n", (int)getpid(), buf);
}

#define fv_dbg(...)                                                                                \
    do {                                                                                           \
        if (g_debug > 0) {                                                                         \
            fv_log(__VA_ARGS__);                                                                   \
        }                                                                                          \
    } while (0)

/* Fails a call the fake does not model: errno ENOSYS and a line on stderr, never success. */
static void fv_unsupported(const char *what)
{
    fv_log("%s is not implemented by the fake provider (tests/fakeverbs)", what);
    errno = ENOSYS;
}

FV_EXPORT int fv_debug_enabled(void)
{
    return g_debug > 0;
}

/* One entry of a port's GID table; an empty entry reads as the zero GID. */
struct fv_gid {
    bool empty;
    bool link_local; /* fe80::<guid>; else ::ffff:v4 */
    uint32_t v4;     /* network order */
    uint32_t type;   /* IBV_GID_TYPE_* */
};

struct fv_dev {
    struct ibv_device dev;
    int index;
    bool port_down;
    bool ib; /* InfiniBand link layer; else Ethernet (RoCE) */
    uint64_t guid;
    int ngids; /* 0 until the device is set up: the default table */
    struct fv_gid gids[FV_MAX_GIDS];
};

static struct fv_dev g_devs[FV_MAX_DEVS];
static int g_ndevs;
static int g_config_err; /* errno value when the environment was malformed */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int parse_fault(const char *item)
{
    const char *colon = strchr(item, ':');
    char *end;
    long n;
    if (colon == NULL) {
        return -1;
    }
    errno = 0;
    n     = strtol(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0' || n < 0) {
        return -1;
    }
    if (strncmp(item, "bad_rkey:", 9) == 0 && n >= 1) {
        g_fault_bad_rkey = n;
    } else if (strncmp(item, "starve_recv:", 12) == 0) {
        g_fault_starve_recv = n;
        /* 0 means: drop every receive; keep "unset" distinct */
        if (n == 0) {
            g_fault_starve_recv = -2;
        }
    } else {
        return -1;
    }
    return 0;
}

/* "gids=E+E+..." of FAKEVERBS_DEVICES: each E is "-" (an empty entry) or TYPE[@ADDR], TYPE one
 * of ib, v1 (RoCE v1), v2 (RoCE v2), ADDR "ll" (fe80::<guid>) or an IPv4 address
 * (::ffff:ADDR; the default 127.0.0.1). */
static int parse_gids(struct fv_dev *d, char *list)
{
    char *save = NULL;
    d->ngids   = 0;
    for (char *e = strtok_r(list, "+", &save); e != NULL; e = strtok_r(NULL, "+", &save)) {
        struct fv_gid *g = &d->gids[d->ngids];
        char *at         = strchr(e, '@');
        struct in_addr a;
        if (d->ngids == FV_MAX_GIDS) {
            fv_log("FAKEVERBS_DEVICES: device '%s': more than %d GIDs", d->dev.name, FV_MAX_GIDS);
            return -1;
        }
        memset(g, 0, sizeof(*g));
        d->ngids++;
        if (strcmp(e, "-") == 0) {
            g->empty = true;
            continue;
        }
        if (at != NULL) {
            *at++ = '\0';
        }
        if (strcmp(e, "ib") == 0) {
            g->type = IBV_GID_TYPE_IB;
        } else if (strcmp(e, "v1") == 0) {
            g->type = IBV_GID_TYPE_ROCE_V1;
        } else if (strcmp(e, "v2") == 0) {
            g->type = IBV_GID_TYPE_ROCE_V2;
        } else {
            fv_log("FAKEVERBS_DEVICES: device '%s': bad GID type '%s' (ib, v1, v2, or - for none)",
                   d->dev.name, e);
            return -1;
        }
        if (at != NULL && strcmp(at, "ll") == 0) {
            g->link_local = true;
        } else if (at != NULL && inet_pton(AF_INET, at, &a) == 1) {
            g->v4 = a.s_addr;
        } else if (at != NULL) {
            fv_log("FAKEVERBS_DEVICES: device '%s': bad GID address '%s' (ll or IPv4)", d->dev.name,
                   at);
            return -1;
        } else {
            g->v4 = htonl(0x7f000001);
        }
    }
    if (d->ngids == 0) {
        fv_log("FAKEVERBS_DEVICES: device '%s': gids= names no GID", d->dev.name);
        return -1;
    }
    return 0;
}

/* The default GID tables: RoCE: fe80::<guid> (RoCE v1), ::ffff:127.0.0.1 (RoCE v2); IB: the
 * link-local GID. */
static void default_gids(struct fv_dev *d)
{
    memset(d->gids, 0, sizeof(d->gids));
    d->gids[0].link_local = true;
    d->gids[0].type       = d->ib ? IBV_GID_TYPE_IB : IBV_GID_TYPE_ROCE_V1;
    d->ngids              = 1;
    if (!d->ib) {
        d->gids[1].v4   = htonl(0x7f000001);
        d->gids[1].type = IBV_GID_TYPE_ROCE_V2;
        d->ngids        = 2;
    }
}

static int parse_devices(const char *spec)
{
    char buf[1024];
    char *save = NULL;
    if (strlen(spec) >= sizeof(buf)) {
        fv_log("FAKEVERBS_DEVICES is too long");
        return -1;
    }
    strcpy(buf, spec);
    for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        char *opt = strchr(tok, ':');
        struct fv_dev *d;
        if (g_ndevs == FV_MAX_DEVS) {
            fv_log("FAKEVERBS_DEVICES: more than %d devices", FV_MAX_DEVS);
            return -1;
        }
        d = &g_devs[g_ndevs];
        if (opt != NULL) {
            *opt++ = '\0';
        }
        if (tok[0] == '\0' || strlen(tok) >= sizeof(d->dev.name)) {
            fv_log("FAKEVERBS_DEVICES: bad device name '%s' (1 to %zu characters)", tok,
                   sizeof(d->dev.name) - 1);
            return -1;
        }
        for (int i = 0; i < g_ndevs; i++) {
            if (strcmp(g_devs[i].dev.name, tok) == 0) {
                fv_log("FAKEVERBS_DEVICES: device '%s' named twice", tok);
                return -1;
            }
        }
        while (opt != NULL) {
            char *next = strchr(opt, ':');
            if (next != NULL) {
                *next++ = '\0';
            }
            if (strcmp(opt, "down") == 0) {
                d->port_down = true;
            } else if (strcmp(opt, "ib") == 0) {
                d->ib = true;
            } else if (strncmp(opt, "gids=", 5) == 0) {
                strcpy(d->dev.name, tok);
                if (parse_gids(d, opt + 5) != 0) {
                    return -1;
                }
            } else {
                fv_log("FAKEVERBS_DEVICES: unknown option '%s' for device '%s' (down, ib, gids=)",
                       opt, tok);
                return -1;
            }
            opt = next;
        }
        strcpy(d->dev.name, tok);
        if (d->ngids == 0) {
            default_gids(d);
        }
        g_ndevs++;
    }
    if (g_ndevs == 0) {
        fv_log("FAKEVERBS_DEVICES names no device");
        return -1;
    }
    return 0;
}

static void fv_init_once(void)
{
    const char *dbg    = getenv("FAKEVERBS_DEBUG");
    const char *devs   = getenv("FAKEVERBS_DEVICES");
    const char *faults = getenv("FAKEVERBS_FAULT");
    g_debug            = dbg != NULL && strcmp(dbg, "0") != 0 && dbg[0] != '\0';
    if (faults != NULL && faults[0] != '\0') {
        char buf[256];
        char *save = NULL;
        if (strlen(faults) >= sizeof(buf)) {
            fv_log("FAKEVERBS_FAULT is too long");
            g_config_err = EINVAL;
            return;
        }
        strcpy(buf, faults);
        for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
            if (parse_fault(t) != 0) {
                fv_log("FAKEVERBS_FAULT: bad item '%s' (bad_rkey:N with N >= 1, starve_recv:N)", t);
                g_config_err = EINVAL;
                return;
            }
        }
    }
    if (devs == NULL || devs[0] == '\0') {
        devs = "fxv0";
    }
    if (parse_devices(devs) != 0) {
        g_ndevs      = 0;
        g_config_err = EINVAL;
        return;
    }
    for (int i = 0; i < g_ndevs; i++) {
        struct fv_dev *d = &g_devs[i];
        uint64_t h       = 1469598103934665603ull;
        d->index         = i;
        for (const char *p = d->dev.name; *p != '\0'; p++) {
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        }
        d->guid               = (h & 0x0000ffffffffffffull) | 0x0200000000000000ull;
        d->dev.node_type      = IBV_NODE_CA;
        d->dev.transport_type = IBV_TRANSPORT_IB;
        snprintf(d->dev.dev_name, sizeof(d->dev.dev_name), "uverbs%d", i);
        snprintf(d->dev.dev_path, sizeof(d->dev.dev_path), "/nonexistent/fakeverbs/uverbs%d", i);
        snprintf(d->dev.ibdev_path, sizeof(d->dev.ibdev_path), "/nonexistent/fakeverbs/%s",
                 d->dev.name);
    }
    fv_dbg("%d device(s), first %s", g_ndevs, g_devs[0].dev.name);
}

static int fv_init(void)
{
    pthread_once(&g_once, fv_init_once);
    if (g_config_err != 0) {
        errno = g_config_err;
        return -1;
    }
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------------------------------- */
/* Objects */

struct fv_qp;

struct fv_ctx {
    struct ibv_context ctx;
    struct fv_dev *dev;
    pthread_mutex_t lock;
    pthread_t nic;
    int epfd;
    int bell; /* eventfd: wakes the NIC thread */
    bool stop;
    uint32_t next_key;
    struct fv_mr *mrs;
    struct fv_qp *qps;
    int npd, ncq, nchan;
    bool overrun; /* a CQ overran: its QPs go to ERR in the NIC's next round */
};

struct fv_pd {
    struct ibv_pd pd;
    int users; /* MRs and QPs */
};

struct fv_mr {
    struct ibv_mr mr;
    int access;
    uint64_t iova;
    struct fv_mr *next;
};

struct fv_ev {
    struct fv_cq *cq;
    struct fv_ev *next;
};

struct fv_chan {
    struct ibv_comp_channel ch;
    int wfd; /* write end of the pipe whose read end is ch.fd: one byte while events wait */
    struct fv_ev *head, *tail;
    int ncq;
};

struct fv_cq {
    struct ibv_cq cq;
    struct ibv_wc *ring;
    int cap, head, count;
    bool armed, overrun;
    bool solicited_only; /* armed for solicited (and error) completions only */
    uint32_t delivered;  /* events returned by ibv_get_cq_event */
    uint32_t acked;
    int nqp;
};

enum wr_state { WR_QUEUED, WR_SENT, WR_DONE, WR_FAILED };

struct fv_swr {
    uint64_t wr_id;
    enum ibv_wr_opcode opcode;
    bool signaled;
    bool solicited;
    enum wr_state state;
    enum ibv_wc_status err;
    uint32_t imm;
    uint64_t raddr;
    uint32_t rkey;
    int nsge;
    struct ibv_sge sge[FV_MAX_SGE];
    uint8_t *inl; /* IBV_SEND_INLINE: the data, copied at post time */
    uint32_t len;
    uint32_t psn;
    bool has_psn;
    int rnr_count;
    uint64_t deadline;
    uint8_t *frame; /* kept for retransmission after an RNR NAK */
    size_t framelen;
};

struct fv_rwr {
    uint64_t wr_id;
    int nsge;
    struct ibv_sge sge[FV_MAX_SGE];
};

struct fv_hdr {
    uint32_t magic;
    uint8_t type;
    uint8_t status;
    uint8_t rnr_timer;
    uint8_t solicited; /* IBV_SEND_SOLICITED */
    uint32_t psn;
    uint32_t imm;
    uint32_t rkey;
    uint32_t len;
    uint64_t raddr;
};

enum fv_type {
    T_WRITE = 1,
    T_WRITE_IMM,
    T_SEND,
    T_SEND_IMM,
    T_READ,
    T_ACK, /* status: enum fv_ack */
    T_READ_RESP,
    T_DREQ,
    T_DREP,
};

enum fv_ack { A_OK, A_RNR, A_ACCESS, A_INV_REQ, A_OP_ERR };

struct fv_qp {
    struct ibv_qp qp;
    struct fv_qp *next;
    /* the QP's state in the "hardware"; qp.state, which programs read, follows it only in
     * ibv_modify_qp and ibv_query_qp, as in the real library (an error the NIC raises is not
     * visible there until the program asks) */
    enum ibv_qp_state hw;
    struct ibv_qp_cap cap;
    bool sq_sig_all;
    int access;
    uint8_t min_rnr_timer, timeout, retry_cnt, rnr_retry;
    uint32_t dest_qpn, sq_psn, rq_psn;
    enum ibv_mtu path_mtu;
    uint8_t port;
    uint16_t pkey_index;
    uint8_t max_rd_atomic, max_dest_rd_atomic;
    struct ibv_ah_attr ah;
    /* send queue: a ring of cap.max_send_wr entries */
    struct fv_swr *sq;
    int sq_head, sq_count;
    int sq_unsignaled; /* completed unsignaled WRs still holding their slots */
    uint32_t next_psn, expected_psn;
    uint64_t rnr_until;
    /* the transport timer: runs while sent requests wait for an acknowledgement, restarted
     * whenever the connection makes progress (bytes leave, an acknowledgement arrives) */
    uint64_t tdeadline;
    /* receive queue */
    struct fv_rwr *rq;
    int rq_head, rq_count;
    /* the wire */
    int fd;
    bool peer_dead, want_out;
    uint8_t *obuf;
    size_t olen, ooff, ocap;
    struct fv_hdr ih;
    size_t igot;
    uint8_t *ipay;
    size_t ipay_got;
    fv_cm_hook_fn hook;
    void *hook_arg;
};

static struct fv_ctx *ctx_of(struct ibv_context *c)
{
    return (struct fv_ctx *)c;
}

static const char *state_name(enum ibv_qp_state s)
{
    static const char *const names[] = {"RESET", "INIT", "RTR", "RTS", "SQD", "SQE", "ERR"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "UNKNOWN";
}

/* ---------------------------------------------------------------------------------------- */
/* Devices */

FV_EXPORT struct ibv_device **ibv_get_device_list(int *num_devices)
{
    struct ibv_device **list;
    if (fv_init() != 0) {
        return NULL;
    }
    list = calloc((size_t)g_ndevs + 1, sizeof(*list));
    if (list == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    for (int i = 0; i < g_ndevs; i++) {
        list[i] = &g_devs[i].dev;
    }
    if (num_devices != NULL) {
        *num_devices = g_ndevs;
    }
    return list;
}

FV_EXPORT void ibv_free_device_list(struct ibv_device **list)
{
    free(list);
}

FV_EXPORT const char *ibv_get_device_name(struct ibv_device *device)
{
    return device->name;
}

FV_EXPORT __be64 ibv_get_device_guid(struct ibv_device *device)
{
    return htobe64(((struct fv_dev *)device)->guid);
}

FV_EXPORT int ibv_get_device_index(struct ibv_device *device)
{
    return ((struct fv_dev *)device)->index;
}

static int fv_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
static int fv_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);
static int fv_poll_cq(struct ibv_cq *ibcq, int n, struct ibv_wc *wc);
static int fv_req_notify_cq(struct ibv_cq *ibcq, int solicited_only);
static void *nic_main(void *arg);

static int fv_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
    *bad = wr;
    fv_unsupported("ibv_post_srq_recv (shared receive queues)");
    return ENOSYS;
}

static struct ibv_mw *fv_alloc_mw(struct ibv_pd *pd, enum ibv_mw_type type)
{
    fv_unsupported("ibv_alloc_mw (memory windows)");
    return NULL;
}

static int fv_bind_mw(struct ibv_qp *qp, struct ibv_mw *mw, struct ibv_mw_bind *bind)
{
    fv_unsupported("ibv_bind_mw (memory windows)");
    return ENOSYS;
}

static int fv_dealloc_mw(struct ibv_mw *mw)
{
    fv_unsupported("ibv_dealloc_mw (memory windows)");
    return ENOSYS;
}

FV_EXPORT struct ibv_context *ibv_open_device(struct ibv_device *device)
{
    struct fv_ctx *c;
    struct epoll_event ev = {.events = EPOLLIN};
    int ret;
    if (fv_init() != 0) {
        return NULL;
    }
    if (device == NULL || (struct fv_dev *)device < g_devs ||
        (struct fv_dev *)device >= g_devs + g_ndevs) {
        fv_log("ibv_open_device: not a device of this provider");
        errno = EINVAL;
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    c->dev                   = (struct fv_dev *)device;
    c->ctx.device            = device;
    c->ctx.cmd_fd            = -1;
    c->ctx.num_comp_vectors  = 1;
    c->ctx.abi_compat        = NULL; /* not an extended context: the headers' inlines fall back */
    c->ctx.ops.poll_cq       = fv_poll_cq;
    c->ctx.ops.req_notify_cq = fv_req_notify_cq;
    c->ctx.ops.post_send     = fv_post_send;
    c->ctx.ops.post_recv     = fv_post_recv;
    c->ctx.ops.post_srq_recv = fv_post_srq_recv;
    c->ctx.ops.alloc_mw      = fv_alloc_mw;
    c->ctx.ops.bind_mw       = fv_bind_mw;
    c->ctx.ops.dealloc_mw    = fv_dealloc_mw;
    c->next_key              = 0x100 + (uint32_t)c->dev->index;
    pthread_mutex_init(&c->ctx.mutex, NULL);
    pthread_mutex_init(&c->lock, NULL);
    /* the asynchronous event fd exists (programs poll it) but the fake raises no async events */
    c->ctx.async_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->bell         = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->epfd         = epoll_create1(EPOLL_CLOEXEC);
    if (c->ctx.async_fd < 0 || c->bell < 0 || c->epfd < 0) {
        goto err_close;
    }
    ev.data.ptr = NULL;
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->bell, &ev) != 0) {
        goto err_close;
    }
    ret = pthread_create(&c->nic, NULL, nic_main, c);
    if (ret != 0) {
        errno = ret;
        goto err_close;
    }
    fv_dbg("opened %s", device->name);
    return &c->ctx;
err_close:
    ret = errno;
    if (c->ctx.async_fd >= 0) {
        close(c->ctx.async_fd);
    }
    if (c->bell >= 0) {
        close(c->bell);
    }
    if (c->epfd >= 0) {
        close(c->epfd);
    }
    free(c);
    errno = ret;
    return NULL;
}

static void ring_bell(struct fv_ctx *c)
{
    uint64_t one = 1;
    if (write(c->bell, &one, sizeof(one)) < 0 && errno != EAGAIN) {
        fv_log("NIC doorbell write failed: %s", strerror(errno));
    }
}

FV_EXPORT int ibv_close_device(struct ibv_context *context)
{
    struct fv_ctx *c = ctx_of(context);
    pthread_mutex_lock(&c->lock);
    if (c->qps != NULL || c->mrs != NULL || c->npd != 0 || c->ncq != 0 || c->nchan != 0) {
        fv_log("ibv_close_device(%s): resources still allocated (QPs %s, MRs %s, PDs %d, CQs %d, "
               "completion channels %d)",
               c->dev->dev.name, c->qps ? "yes" : "no", c->mrs ? "yes" : "no", c->npd, c->ncq,
               c->nchan);
        pthread_mutex_unlock(&c->lock);
        return EBUSY;
    }
    c->stop = true;
    pthread_mutex_unlock(&c->lock);
    ring_bell(c);
    pthread_join(c->nic, NULL);
    close(c->bell);
    close(c->epfd);
    close(c->ctx.async_fd);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->ctx.mutex);
    fv_dbg("closed %s", c->dev->dev.name);
    free(c);
    return 0;
}

FV_EXPORT int ibv_query_device(struct ibv_context *context, struct ibv_device_attr *attr)
{
    struct fv_ctx *c = ctx_of(context);
    memset(attr, 0, sizeof(*attr));
    snprintf(attr->fw_ver, sizeof(attr->fw_ver), "fakeverbs-1");
    attr->node_guid           = htobe64(c->dev->guid);
    attr->sys_image_guid      = htobe64(c->dev->guid);
    attr->max_mr_size         = UINT64_MAX;
    attr->page_size_cap       = 0xfffff000;
    attr->hw_ver              = 1;
    attr->max_qp              = 1 << 16;
    attr->max_qp_wr           = FV_MAX_QP_WR;
    attr->device_cap_flags    = IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_PORT_ACTIVE_EVENT;
    attr->max_sge             = FV_MAX_SGE;
    attr->max_sge_rd          = FV_MAX_SGE;
    attr->max_cq              = 1 << 16;
    attr->max_cqe             = FV_MAX_CQE;
    attr->max_mr              = 1 << 20;
    attr->max_pd              = 1 << 16;
    attr->max_qp_rd_atom      = 16;
    attr->max_qp_init_rd_atom = 16;
    attr->max_res_rd_atom     = 1 << 20;
    attr->atomic_cap          = IBV_ATOMIC_NONE;
    attr->max_pkeys           = 1;
    attr->local_ca_ack_delay  = 16;
    attr->phys_port_cnt       = 1;
    return 0;
}

FV_EXPORT int ibv_query_port(struct ibv_context *context, uint8_t port_num,
                             struct _compat_ibv_port_attr *compat)
{
    struct fv_ctx *c = ctx_of(context);
    /* the headers' inline zeroes a full struct ibv_port_attr and passes it here cast */
    struct ibv_port_attr *a = (struct ibv_port_attr *)compat;
    if (port_num != 1) {
        fv_dbg("ibv_query_port(%s): no port %u", c->dev->dev.name, port_num);
        errno = EINVAL;
        return EINVAL;
    }
    a->state          = c->dev->port_down ? IBV_PORT_DOWN : IBV_PORT_ACTIVE;
    a->phys_state     = c->dev->port_down ? 3 /* disabled */ : 5 /* link up */;
    a->max_mtu        = IBV_MTU_4096;
    a->active_mtu     = IBV_MTU_4096;
    a->gid_tbl_len    = c->dev->ngids;
    a->port_cap_flags = c->dev->ib ? 0 : IBV_PORT_IP_BASED_GIDS;
    a->max_msg_sz     = FV_MAX_MSG;
    a->pkey_tbl_len   = 1;
    a->lid            = c->dev->ib ? (uint16_t)(c->dev->index + 1) : 0;
    a->sm_lid         = c->dev->ib ? 1 : 0;
    a->lmc            = 0;
    a->max_vl_num     = 4;
    a->sm_sl          = 0;
    a->active_width   = 2;  /* 4X */
    a->active_speed   = 32; /* EDR: 25 Gb/s a lane, 100 Gb/s */
    a->link_layer     = c->dev->ib ? IBV_LINK_LAYER_INFINIBAND : IBV_LINK_LAYER_ETHERNET;
    return 0;
}

/* Entry index of the port's GID table: 0, EINVAL past the table, ENODATA for an empty entry
 * (its GID reads as zero). */
static int fill_gid(struct fv_ctx *c, uint32_t port, uint32_t index, union ibv_gid *gid,
                    uint32_t *type)
{
    const struct fv_gid *g;
    uint64_t guid = c->dev->guid;
    if (port != 1 || index >= (uint32_t)c->dev->ngids) {
        return EINVAL;
    }
    g = &c->dev->gids[index];
    memset(gid, 0, sizeof(*gid));
    *type = g->type;
    if (g->empty) {
        return ENODATA;
    }
    if (g->link_local) {
        gid->raw[0] = 0xfe;
        gid->raw[1] = 0x80;
        for (int i = 0; i < 8; i++) {
            gid->raw[8 + i] = (uint8_t)(guid >> (56 - 8 * i));
        }
    } else {
        gid->raw[10] = 0xff;
        gid->raw[11] = 0xff;
        memcpy(gid->raw + 12, &g->v4, 4);
    }
    return 0;
}

/* As the real library reads sysfs: an empty entry is the zero GID, not an error. */
FV_EXPORT int ibv_query_gid(struct ibv_context *context, uint8_t port_num, int index,
                            union ibv_gid *gid)
{
    uint32_t type;
    if (index < 0 || fill_gid(ctx_of(context), port_num, (uint32_t)index, gid, &type) == EINVAL) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

FV_EXPORT int _ibv_query_gid_ex(struct ibv_context *context, uint32_t port_num, uint32_t gid_index,
                                struct ibv_gid_entry *entry, uint32_t flags, size_t entry_size)
{
    struct ibv_gid_entry e = {0};
    int ret;
    if (flags != 0 || entry_size < sizeof(e)) {
        return EINVAL;
    }
    ret = fill_gid(ctx_of(context), port_num, gid_index, &e.gid, &e.gid_type);
    if (ret != 0) {
        return ret; /* EINVAL: no such entry; ENODATA: an empty one */
    }
    e.gid_index    = gid_index;
    e.port_num     = port_num;
    e.ndev_ifindex = ctx_of(context)->dev->ib ? 0 : 1; /* lo */
    memcpy(entry, &e, sizeof(e));
    return 0;
}

FV_EXPORT ssize_t _ibv_query_gid_table(struct ibv_context *context, struct ibv_gid_entry *entries,
                                       size_t max_entries, uint32_t flags, size_t entry_size)
{
    size_t n = 0;
    if (flags != 0 || entry_size < sizeof(*entries)) {
        return -EINVAL;
    }
    for (uint32_t i = 0; i < (uint32_t)ctx_of(context)->dev->ngids && n < max_entries; i++) {
        struct ibv_gid_entry e;
        if (_ibv_query_gid_ex(context, 1, i, &e, 0, sizeof(e)) == 0) {
            memcpy((uint8_t *)entries + n * entry_size, &e, sizeof(e));
            n++;
        }
    }
    return (ssize_t)n;
}

FV_EXPORT int ibv_query_pkey(struct ibv_context *context, uint8_t port_num, int index, __be16 *pkey)
{
    if (port_num != 1 || index != 0) {
        errno = EINVAL;
        return -1;
    }
    *pkey = htobe16(0xffff);
    return 0;
}

FV_EXPORT int ibv_fork_init(void)
{
    /* nothing to do: the fake pins no memory, so fork() cannot break registrations */
    return 0;
}

FV_EXPORT enum ibv_fork_status ibv_is_fork_initialized(void)
{
    return IBV_FORK_UNNEEDED;
}

/* ---------------------------------------------------------------------------------------- */
/* Strings */

FV_EXPORT const char *ibv_wc_status_str(enum ibv_wc_status status)
{
    static const char *const s[] = {
        [IBV_WC_SUCCESS]            = "success",
        [IBV_WC_LOC_LEN_ERR]        = "local length error",
        [IBV_WC_LOC_QP_OP_ERR]      = "local QP operation error",
        [IBV_WC_LOC_EEC_OP_ERR]     = "local EE context operation error",
        [IBV_WC_LOC_PROT_ERR]       = "local protection error",
        [IBV_WC_WR_FLUSH_ERR]       = "Work Request Flushed Error",
        [IBV_WC_MW_BIND_ERR]        = "memory management operation error",
        [IBV_WC_BAD_RESP_ERR]       = "bad response error",
        [IBV_WC_LOC_ACCESS_ERR]     = "local access error",
        [IBV_WC_REM_INV_REQ_ERR]    = "remote invalid request error",
        [IBV_WC_REM_ACCESS_ERR]     = "remote access error",
        [IBV_WC_REM_OP_ERR]         = "remote operation error",
        [IBV_WC_RETRY_EXC_ERR]      = "transport retry counter exceeded",
        [IBV_WC_RNR_RETRY_EXC_ERR]  = "RNR retry counter exceeded",
        [IBV_WC_LOC_RDD_VIOL_ERR]   = "local RDD violation error",
        [IBV_WC_REM_INV_RD_REQ_ERR] = "remote invalid RD request",
        [IBV_WC_REM_ABORT_ERR]      = "aborted error",
        [IBV_WC_INV_EECN_ERR]       = "invalid EE context number",
        [IBV_WC_INV_EEC_STATE_ERR]  = "invalid EE context state",
        [IBV_WC_FATAL_ERR]          = "fatal error",
        [IBV_WC_RESP_TIMEOUT_ERR]   = "response timeout error",
        [IBV_WC_GENERAL_ERR]        = "general error",
        [IBV_WC_TM_ERR]             = "TM error",
        [IBV_WC_TM_RNDV_INCOMPLETE] = "TM software rendezvous",
    };
    if ((unsigned)status < sizeof(s) / sizeof(s[0]) && s[status] != NULL) {
        return s[status];
    }
    return "unknown";
}

FV_EXPORT const char *ibv_port_state_str(enum ibv_port_state state)
{
    static const char *const s[] = {"PORT_NOP",   "PORT_DOWN",   "PORT_INIT",
                                    "PORT_ARMED", "PORT_ACTIVE", "PORT_ACTIVE_DEFER"};
    return (unsigned)state < 6 ? s[state] : "invalid state";
}

FV_EXPORT const char *ibv_node_type_str(enum ibv_node_type node_type)
{
    switch (node_type) {
    case IBV_NODE_CA:
        return "InfiniBand channel adapter";
    case IBV_NODE_SWITCH:
        return "InfiniBand switch";
    case IBV_NODE_ROUTER:
        return "InfiniBand router";
    case IBV_NODE_RNIC:
        return "iWARP NIC";
    case IBV_NODE_USNIC:
        return "usNIC";
    case IBV_NODE_USNIC_UDP:
        return "usNIC UDP";
    case IBV_NODE_UNSPECIFIED:
        return "unspecified";
    default:
        return "unknown";
    }
}

FV_EXPORT const char *ibv_event_type_str(enum ibv_event_type event)
{
    switch (event) {
    case IBV_EVENT_CQ_ERR:
        return "CQ error";
    case IBV_EVENT_QP_FATAL:
        return "local work queue catastrophic error";
    case IBV_EVENT_QP_REQ_ERR:
        return "invalid request local work queue error";
    case IBV_EVENT_QP_ACCESS_ERR:
        return "local access violation work queue error";
    case IBV_EVENT_COMM_EST:
        return "communication established";
    case IBV_EVENT_PORT_ACTIVE:
        return "port active";
    case IBV_EVENT_PORT_ERR:
        return "port error";
    case IBV_EVENT_DEVICE_FATAL:
        return "local catastrophic error";
    default:
        return "unknown";
    }
}

/* ---------------------------------------------------------------------------------------- */
/* PD, MR */

FV_EXPORT struct ibv_pd *ibv_alloc_pd(struct ibv_context *context)
{
    struct fv_ctx *c = ctx_of(context);
    struct fv_pd *pd = calloc(1, sizeof(*pd));
    if (pd == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    pd->pd.context = context;
    pthread_mutex_lock(&c->lock);
    pd->pd.handle = (uint32_t)++c->npd;
    pthread_mutex_unlock(&c->lock);
    return &pd->pd;
}

FV_EXPORT int ibv_dealloc_pd(struct ibv_pd *ibpd)
{
    struct fv_pd *pd = (struct fv_pd *)ibpd;
    struct fv_ctx *c = ctx_of(ibpd->context);
    pthread_mutex_lock(&c->lock);
    if (pd->users != 0) {
        fv_log("ibv_dealloc_pd: %d MR(s)/QP(s) still use this PD", pd->users);
        pthread_mutex_unlock(&c->lock);
        return EBUSY;
    }
    c->npd--;
    pthread_mutex_unlock(&c->lock);
    free(pd);
    return 0;
}

static const int fv_known_access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                                   IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC |
                                   IBV_ACCESS_RELAXED_ORDERING;

FV_EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *ibpd, void *addr, size_t length,
                                          uint64_t iova, unsigned int access)
{
    struct fv_pd *pd = (struct fv_pd *)ibpd;
    struct fv_ctx *c = ctx_of(ibpd->context);
    struct fv_mr *mr;
    if ((access & ~(unsigned)fv_known_access) != 0) {
        fv_log("ibv_reg_mr: access flags 0x%x not supported by the fake", access);
        errno = EINVAL;
        return NULL;
    }
    /* the spec: remote write or atomic access needs local write */
    if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) != 0 &&
        (access & IBV_ACCESS_LOCAL_WRITE) == 0) {
        fv_dbg("ibv_reg_mr: remote write without local write");
        errno = EINVAL;
        return NULL;
    }
    if (addr == NULL && length != 0) {
        errno = EFAULT;
        return NULL;
    }
    mr = calloc(1, sizeof(*mr));
    if (mr == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    mr->mr.context = ibpd->context;
    mr->mr.pd      = ibpd;
    mr->mr.addr    = addr;
    mr->mr.length  = length;
    mr->access     = (int)access;
    mr->iova       = iova;
    pthread_mutex_lock(&c->lock);
    /* a key's low byte varies so that a stale key rarely matches a new MR */
    mr->mr.lkey = (c->next_key << 8) | ((c->next_key * 37u) & 0xff);
    mr->mr.rkey = mr->mr.lkey;
    c->next_key += FV_MAX_DEVS;
    mr->mr.handle = mr->mr.lkey;
    mr->next      = c->mrs;
    c->mrs        = mr;
    pd->users++;
    pthread_mutex_unlock(&c->lock);
    fv_dbg("reg_mr %p+%zu access 0x%x -> key 0x%x", addr, length, access, mr->mr.lkey);
    return &mr->mr;
}

FV_EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access)
{
    return ibv_reg_mr_iova2(pd, addr, length, (uintptr_t)addr, (unsigned)access);
}

FV_EXPORT struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr, size_t length,
                                         uint64_t iova, int access)
{
    return ibv_reg_mr_iova2(pd, addr, length, iova, (unsigned)access);
}

FV_EXPORT struct ibv_mr *ibv_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t offset, size_t length,
                                           uint64_t iova, int fd, int access)
{
    fv_log("ibv_reg_dmabuf_mr: the fake provider has no DMA-BUF exporter");
    errno = EOPNOTSUPP;
    return NULL;
}

FV_EXPORT int ibv_dereg_mr(struct ibv_mr *ibmr)
{
    struct fv_ctx *c = ctx_of(ibmr->context);
    struct fv_mr **pp;
    pthread_mutex_lock(&c->lock);
    for (pp = &c->mrs; *pp != NULL; pp = &(*pp)->next) {
        if (&(*pp)->mr == ibmr) {
            *pp = (*pp)->next;
            ((struct fv_pd *)ibmr->pd)->users--;
            pthread_mutex_unlock(&c->lock);
            fv_dbg("dereg_mr key 0x%x", ibmr->lkey);
            free(ibmr);
            return 0;
        }
    }
    pthread_mutex_unlock(&c->lock);
    fv_log("ibv_dereg_mr: unknown MR");
    return EINVAL;
}

/* The host address of [addr, addr+len) through key in pd, with the access needed, or NULL. */
static uint8_t *mr_lookup(struct fv_ctx *c, struct ibv_pd *pd, uint32_t key, uint64_t addr,
                          uint64_t len, int need)
{
    for (struct fv_mr *m = c->mrs; m != NULL; m = m->next) {
        if (m->mr.lkey != key) {
            continue;
        }
        if (m->mr.pd != pd || (m->access & need) != need || addr < m->iova || len > m->mr.length ||
            addr - m->iova > m->mr.length - len) {
            return NULL;
        }
        return (uint8_t *)m->mr.addr + (addr - m->iova);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Completion channels and CQs */

FV_EXPORT struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context)
{
    struct fv_ctx *c   = ctx_of(context);
    struct fv_chan *ch = calloc(1, sizeof(*ch));
    int p[2];
    if (ch == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (pipe2(p, O_CLOEXEC) != 0) {
        free(ch);
        return NULL;
    }
    ch->ch.context = context;
    ch->ch.fd      = p[0];
    ch->wfd        = p[1];
    pthread_mutex_lock(&c->lock);
    c->nchan++;
    pthread_mutex_unlock(&c->lock);
    return &ch->ch;
}

FV_EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel *channel)
{
    struct fv_chan *ch = (struct fv_chan *)channel;
    struct fv_ctx *c   = ctx_of(channel->context);
    pthread_mutex_lock(&c->lock);
    if (ch->ncq != 0) {
        fv_log("ibv_destroy_comp_channel: %d CQ(s) still use it", ch->ncq);
        pthread_mutex_unlock(&c->lock);
        return EBUSY;
    }
    c->nchan--;
    pthread_mutex_unlock(&c->lock);
    while (ch->head != NULL) {
        struct fv_ev *e = ch->head;
        ch->head        = e->next;
        free(e);
    }
    close(ch->ch.fd);
    close(ch->wfd);
    free(ch);
    return 0;
}

/* Keeps one byte in the pipe while events wait; called with the device lock held. */
static void chan_push(struct fv_chan *ch, struct fv_cq *cq)
{
    struct fv_ev *e = malloc(sizeof(*e));
    if (e == NULL) {
        fv_log("completion event lost: out of memory");
        return;
    }
    e->cq   = cq;
    e->next = NULL;
    if (ch->tail == NULL) {
        ch->head = e;
        if (write(ch->wfd, "e", 1) != 1) {
            fv_log("completion channel write failed: %s", strerror(errno));
        }
    } else {
        ch->tail->next = e;
    }
    ch->tail = e;
}

FV_EXPORT struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context,
                                       struct ibv_comp_channel *channel, int comp_vector)
{
    struct fv_ctx *c = ctx_of(context);
    struct fv_cq *cq;
    if (cqe < 1 || cqe > FV_MAX_CQE || comp_vector < 0 ||
        comp_vector >= context->num_comp_vectors) {
        fv_dbg("ibv_create_cq: cqe %d or comp_vector %d out of range", cqe, comp_vector);
        errno = EINVAL;
        return NULL;
    }
    if (channel != NULL && channel->context != context) {
        fv_log("ibv_create_cq: the completion channel belongs to another device context");
        errno = EINVAL;
        return NULL;
    }
    cq = calloc(1, sizeof(*cq));
    if (cq == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    cq->ring = calloc((size_t)cqe, sizeof(*cq->ring));
    if (cq->ring == NULL) {
        free(cq);
        errno = ENOMEM;
        return NULL;
    }
    cq->cap           = cqe;
    cq->cq.context    = context;
    cq->cq.channel    = channel;
    cq->cq.cq_context = cq_context;
    cq->cq.cqe        = cqe;
    pthread_mutex_init(&cq->cq.mutex, NULL);
    pthread_cond_init(&cq->cq.cond, NULL);
    pthread_mutex_lock(&c->lock);
    c->ncq++;
    if (channel != NULL) {
        ((struct fv_chan *)channel)->ncq++;
    }
    pthread_mutex_unlock(&c->lock);
    return &cq->cq;
}

FV_EXPORT int ibv_destroy_cq(struct ibv_cq *ibcq)
{
    struct fv_cq *cq = (struct fv_cq *)ibcq;
    struct fv_ctx *c = ctx_of(ibcq->context);
    pthread_mutex_lock(&c->lock);
    if (cq->nqp != 0) {
        fv_log("ibv_destroy_cq: QPs still use this CQ (%d send or receive queues)", cq->nqp);
        pthread_mutex_unlock(&c->lock);
        return EBUSY;
    }
    if (cq->delivered != cq->acked) {
        /* the real library blocks here until every event is acknowledged */
        fv_log("ibv_destroy_cq: %u completion event(s) not acknowledged with ibv_ack_cq_events",
               cq->delivered - cq->acked);
        pthread_mutex_unlock(&c->lock);
        return EBUSY;
    }
    if (ibcq->channel != NULL) {
        struct fv_chan *ch = (struct fv_chan *)ibcq->channel;
        struct fv_ev **pp  = &ch->head;
        struct fv_ev *prev = NULL;
        /* events not yet read go with the CQ */
        while (*pp != NULL) {
            struct fv_ev *e = *pp;
            if (e->cq == cq) {
                *pp = e->next;
                free(e);
            } else {
                prev = e;
                pp   = &e->next;
            }
        }
        ch->tail = prev;
        if (ch->head == NULL) {
            char b;
            int fl = fcntl(ch->ch.fd, F_GETFL);
            fcntl(ch->ch.fd, F_SETFL, fl | O_NONBLOCK);
            while (read(ch->ch.fd, &b, 1) == 1) {
            }
            fcntl(ch->ch.fd, F_SETFL, fl);
        }
        ch->ncq--;
    }
    c->ncq--;
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&ibcq->mutex);
    pthread_cond_destroy(&ibcq->cond);
    free(cq->ring);
    free(cq);
    return 0;
}

FV_EXPORT int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq,
                               void **cq_context)
{
    struct fv_chan *ch = (struct fv_chan *)channel;
    struct fv_ctx *c   = ctx_of(channel->context);
    for (;;) {
        struct pollfd pfd = {.fd = ch->ch.fd, .events = POLLIN};
        int fl            = fcntl(ch->ch.fd, F_GETFL);
        struct fv_ev *e;
        if ((fl & O_NONBLOCK) == 0) {
            /* a blocking channel: wait for an event as the real read() does */
            if (poll(&pfd, 1, -1) < 0) {
                return -1;
            }
        }
        pthread_mutex_lock(&c->lock);
        e = ch->head;
        if (e == NULL) {
            pthread_mutex_unlock(&c->lock);
            if (fl & O_NONBLOCK) {
                errno = EAGAIN;
                return -1;
            }
            continue;
        }
        ch->head = e->next;
        if (ch->head == NULL) {
            char b;
            ch->tail = NULL;
            if (read(ch->ch.fd, &b, 1) != 1) {
                fv_log("completion channel read failed: %s", strerror(errno));
            }
        }
        e->cq->delivered++;
        *cq         = &e->cq->cq;
        *cq_context = e->cq->cq.cq_context;
        pthread_mutex_unlock(&c->lock);
        free(e);
        return 0;
    }
}

FV_EXPORT void ibv_ack_cq_events(struct ibv_cq *ibcq, unsigned int nevents)
{
    struct fv_cq *cq = (struct fv_cq *)ibcq;
    struct fv_ctx *c = ctx_of(ibcq->context);
    pthread_mutex_lock(&c->lock);
    if (cq->acked + nevents > cq->delivered) {
        fv_log("ibv_ack_cq_events: %u event(s) acknowledged but only %u were delivered", nevents,
               cq->delivered - cq->acked);
    }
    cq->acked += nevents;
    ibcq->comp_events_completed += nevents;
    pthread_mutex_unlock(&c->lock);
}

static int fv_req_notify_cq(struct ibv_cq *ibcq, int solicited_only)
{
    struct fv_cq *cq = (struct fv_cq *)ibcq;
    struct fv_ctx *c = ctx_of(ibcq->context);
    if (ibcq->channel == NULL) {
        fv_log("ibv_req_notify_cq: the CQ has no completion channel");
        return EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    cq->armed          = true;
    cq->solicited_only = solicited_only != 0;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static void qp_to_err(struct fv_qp *qp, const char *why);

/* Adds a completion; device lock held. */
static void cq_push(struct fv_ctx *c, struct fv_cq *cq, const struct ibv_wc *wc, bool solicited)
{
    if (cq->overrun) {
        return;
    }
    if (cq->count == cq->cap) {
        fv_log("CQ OVERRUN: a completion arrived on a full CQ of %d entries; the CQ is now in "
               "error (ibv_poll_cq fails) and its QPs go to the error state",
               cq->cap);
        cq->overrun = true;
        /* not here: the QP whose completion this is may be in the middle of its queue */
        c->overrun = true;
        return;
    }
    cq->ring[(cq->head + cq->count) % cq->cap] = *wc;
    cq->count++;
    if (cq->armed && cq->cq.channel != NULL &&
        (!cq->solicited_only || solicited || wc->status != IBV_WC_SUCCESS)) {
        cq->armed = false;
        chan_push((struct fv_chan *)cq->cq.channel, cq);
    }
}

static int fv_poll_cq(struct ibv_cq *ibcq, int n, struct ibv_wc *wc)
{
    struct fv_cq *cq = (struct fv_cq *)ibcq;
    struct fv_ctx *c = ctx_of(ibcq->context);
    int got          = 0;
    if (n < 0) {
        return -EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    if (cq->overrun) {
        pthread_mutex_unlock(&c->lock);
        return -EOVERFLOW;
    }
    while (got < n && cq->count > 0) {
        wc[got++] = cq->ring[cq->head];
        cq->head  = (cq->head + 1) % cq->cap;
        cq->count--;
    }
    pthread_mutex_unlock(&c->lock);
    return got;
}

FV_EXPORT int ibv_resize_cq(struct ibv_cq *cq, int cqe)
{
    fv_unsupported("ibv_resize_cq");
    return ENOSYS;
}

/* ---------------------------------------------------------------------------------------- */
/* QPs */

FV_EXPORT struct ibv_qp *ibv_create_qp(struct ibv_pd *ibpd, struct ibv_qp_init_attr *attr)
{
    struct fv_ctx *c = ctx_of(ibpd->context);
    struct fv_qp *qp;
    static atomic_uint qpn_counter;
    const struct ibv_qp_cap *cap = &attr->cap;
    if (attr->qp_type != IBV_QPT_RC) {
        fv_log("ibv_create_qp: QP type %d not supported by the fake (RC only)", attr->qp_type);
        errno = EOPNOTSUPP;
        return NULL;
    }
    if (attr->srq != NULL) {
        fv_unsupported("ibv_create_qp with a shared receive queue");
        return NULL;
    }
    if (attr->send_cq == NULL || attr->recv_cq == NULL || attr->send_cq->context != ibpd->context ||
        attr->recv_cq->context != ibpd->context) {
        fv_log("ibv_create_qp: send_cq and recv_cq must be CQs of the PD's device context");
        errno = EINVAL;
        return NULL;
    }
    if (cap->max_send_wr < 1 || cap->max_send_wr > FV_MAX_QP_WR || cap->max_recv_wr < 1 ||
        cap->max_recv_wr > FV_MAX_QP_WR || cap->max_send_sge > FV_MAX_SGE ||
        cap->max_recv_sge > FV_MAX_SGE || cap->max_inline_data > FV_MAX_INL) {
        fv_dbg("ibv_create_qp: capabilities beyond the device's (wr %d, sge %d, inline %d)",
               FV_MAX_QP_WR, FV_MAX_SGE, FV_MAX_INL);
        errno = EINVAL;
        return NULL;
    }
    qp = calloc(1, sizeof(*qp));
    if (qp == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    qp->sq = calloc(cap->max_send_wr, sizeof(*qp->sq));
    qp->rq = calloc(cap->max_recv_wr, sizeof(*qp->rq));
    if (qp->sq == NULL || qp->rq == NULL) {
        free(qp->sq);
        free(qp->rq);
        free(qp);
        errno = ENOMEM;
        return NULL;
    }
    qp->qp.context    = ibpd->context;
    qp->qp.qp_context = attr->qp_context;
    qp->qp.pd         = ibpd;
    qp->qp.send_cq    = attr->send_cq;
    qp->qp.recv_cq    = attr->recv_cq;
    qp->qp.qp_type    = IBV_QPT_RC;
    qp->hw            = IBV_QPS_RESET;
    qp->qp.state      = IBV_QPS_RESET;
    /* Never 0 (rdma_cm reads qp_num 0 as "no QP"; real QP numbers 0 and 1 are reserved):
     * the low 12 bits count 2..4095, so a pid that is a multiple of 4096 still gives QP numbers
     * of its own. */
    qp->qp.qp_num =
        ((uint32_t)(getpid() & 0xfff) << 12) | (atomic_fetch_add(&qpn_counter, 1) % 0xffeu + 2u);
    qp->qp.handle = qp->qp.qp_num;
    pthread_mutex_init(&qp->qp.mutex, NULL);
    pthread_cond_init(&qp->qp.cond, NULL);
    qp->cap        = *cap;
    qp->sq_sig_all = attr->sq_sig_all != 0;
    qp->fd         = -1;
    pthread_mutex_lock(&c->lock);
    qp->next = c->qps;
    c->qps   = qp;
    ((struct fv_pd *)ibpd)->users++;
    ((struct fv_cq *)attr->send_cq)->nqp++;
    ((struct fv_cq *)attr->recv_cq)->nqp++;
    pthread_mutex_unlock(&c->lock);
    fv_dbg("QP 0x%x created (send_wr %u recv_wr %u sge %u/%u inline %u)", qp->qp.qp_num,
           cap->max_send_wr, cap->max_recv_wr, cap->max_send_sge, cap->max_recv_sge,
           cap->max_inline_data);
    return &qp->qp;
}

static void swr_free(struct fv_swr *w)
{
    free(w->inl);
    free(w->frame);
    w->inl   = NULL;
    w->frame = NULL;
}

static void qp_close_wire(struct fv_ctx *c, struct fv_qp *qp)
{
    if (qp->fd >= 0) {
        epoll_ctl(c->epfd, EPOLL_CTL_DEL, qp->fd, NULL);
        close(qp->fd);
        qp->fd = -1;
    }
    free(qp->obuf);
    free(qp->ipay);
    qp->obuf = NULL;
    qp->ipay = NULL;
    qp->olen = qp->ooff = qp->ocap = 0;
    qp->igot = qp->ipay_got = 0;
}

/* Drops every queued WR without completions (the transition to RESET). */
static void qp_reset_queues(struct fv_qp *qp)
{
    for (int i = 0; i < qp->sq_count; i++) {
        swr_free(&qp->sq[(qp->sq_head + i) % (int)qp->cap.max_send_wr]);
    }
    qp->sq_head = qp->sq_count = qp->sq_unsignaled = 0;
    qp->rq_head = qp->rq_count = 0;
    qp->rnr_until              = 0;
}

FV_EXPORT int ibv_destroy_qp(struct ibv_qp *ibqp)
{
    struct fv_qp *qp = (struct fv_qp *)ibqp;
    struct fv_ctx *c = ctx_of(ibqp->context);
    struct fv_qp **pp;
    pthread_mutex_lock(&c->lock);
    for (pp = &c->qps; *pp != NULL && *pp != qp; pp = &(*pp)->next) {
    }
    if (*pp == NULL) {
        pthread_mutex_unlock(&c->lock);
        fv_log("ibv_destroy_qp: unknown QP");
        return EINVAL;
    }
    *pp = qp->next;
    qp_close_wire(c, qp);
    qp_reset_queues(qp);
    ((struct fv_pd *)ibqp->pd)->users--;
    ((struct fv_cq *)ibqp->send_cq)->nqp--;
    ((struct fv_cq *)ibqp->recv_cq)->nqp--;
    pthread_mutex_unlock(&c->lock);
    fv_dbg("QP 0x%x destroyed", ibqp->qp_num);
    pthread_mutex_destroy(&ibqp->mutex);
    pthread_cond_destroy(&ibqp->cond);
    free(qp->sq);
    free(qp->rq);
    free(qp);
    return 0;
}

/* The attribute masks ibv_modify_qp(3) requires, and allows, for each RC transition. */
struct fv_trans {
    enum ibv_qp_state from, to;
    int required, optional;
};

static const struct fv_trans fv_transitions[] = {
    {IBV_QPS_RESET, IBV_QPS_INIT, IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS, 0},
    {IBV_QPS_INIT, IBV_QPS_INIT, 0, IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS},
    {IBV_QPS_INIT, IBV_QPS_RTR,
     IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
         IBV_QP_MIN_RNR_TIMER,
     IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS | IBV_QP_PKEY_INDEX},
    {IBV_QPS_RTR, IBV_QPS_RTS,
     IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_TIMEOUT,
     IBV_QP_CUR_STATE | IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS | IBV_QP_MIN_RNR_TIMER |
         IBV_QP_PATH_MIG_STATE},
    {IBV_QPS_RTS, IBV_QPS_RTS, 0,
     IBV_QP_CUR_STATE | IBV_QP_ACCESS_FLAGS | IBV_QP_ALT_PATH | IBV_QP_PATH_MIG_STATE |
         IBV_QP_MIN_RNR_TIMER},
};

FV_EXPORT int ibv_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int mask)
{
    struct fv_qp *qp = (struct fv_qp *)ibqp;
    struct fv_ctx *c = ctx_of(ibqp->context);
    enum ibv_qp_state cur, to;
    int required = 0, optional = 0;
    bool found = false;
    pthread_mutex_lock(&c->lock);
    cur = qp->hw;
    if ((mask & IBV_QP_CUR_STATE) && attr->cur_qp_state != cur) {
        fv_dbg("modify_qp 0x%x: cur_qp_state %s but the QP is %s", ibqp->qp_num,
               state_name(attr->cur_qp_state), state_name(cur));
        goto err_inval;
    }
    to = (mask & IBV_QP_STATE) ? attr->qp_state : cur;
    if (to == IBV_QPS_RESET || to == IBV_QPS_ERR) {
        found    = true;
        optional = IBV_QP_CUR_STATE;
    } else {
        for (size_t i = 0; i < sizeof(fv_transitions) / sizeof(fv_transitions[0]); i++) {
            if (fv_transitions[i].from == cur && fv_transitions[i].to == to) {
                required = fv_transitions[i].required;
                optional = fv_transitions[i].optional;
                found    = true;
            }
        }
    }
    if (!found) {
        fv_log("ibv_modify_qp(QP 0x%x): transition %s -> %s not allowed", ibqp->qp_num,
               state_name(cur), state_name(to));
        goto err_inval;
    }
    mask &= ~IBV_QP_STATE;
    if ((mask & required) != required || (mask & ~(required | optional)) != 0) {
        fv_log("ibv_modify_qp(QP 0x%x) %s -> %s: attribute mask 0x%x, required 0x%x, allowed "
               "0x%x",
               ibqp->qp_num, state_name(cur), state_name(to), mask, required, required | optional);
        goto err_inval;
    }
    if ((mask & IBV_QP_PORT) && attr->port_num != 1) {
        fv_log("ibv_modify_qp(QP 0x%x): no port %u", ibqp->qp_num, attr->port_num);
        goto err_inval;
    }
    if ((mask & IBV_QP_PKEY_INDEX) && attr->pkey_index != 0) {
        fv_log("ibv_modify_qp(QP 0x%x): no pkey index %u", ibqp->qp_num, attr->pkey_index);
        goto err_inval;
    }
    if ((mask & IBV_QP_PATH_MTU) &&
        (attr->path_mtu < IBV_MTU_256 || attr->path_mtu > IBV_MTU_4096)) {
        fv_log("ibv_modify_qp(QP 0x%x): bad path MTU %d", ibqp->qp_num, attr->path_mtu);
        goto err_inval;
    }
    if (mask & IBV_QP_AV) {
        if (!c->dev->ib && !attr->ah_attr.is_global) {
            fv_log("ibv_modify_qp(QP 0x%x): RoCE needs a global route (ah_attr.is_global)",
                   ibqp->qp_num);
            goto err_inval;
        }
        if (c->dev->ib && attr->ah_attr.dlid == 0) {
            fv_log("ibv_modify_qp(QP 0x%x): InfiniBand needs a destination LID", ibqp->qp_num);
            goto err_inval;
        }
        if (attr->ah_attr.is_global && attr->ah_attr.grh.sgid_index >= c->dev->ngids) {
            fv_log("ibv_modify_qp(QP 0x%x): no GID index %u (%s has %d)", ibqp->qp_num,
                   attr->ah_attr.grh.sgid_index, c->dev->dev.name, c->dev->ngids);
            goto err_inval;
        }
        if (attr->ah_attr.is_global && c->dev->gids[attr->ah_attr.grh.sgid_index].empty) {
            fv_log("ibv_modify_qp(QP 0x%x): GID index %u of %s is empty", ibqp->qp_num,
                   attr->ah_attr.grh.sgid_index, c->dev->dev.name);
            goto err_inval;
        }
        qp->ah = attr->ah_attr;
    }
    if ((mask & IBV_QP_RETRY_CNT) && attr->retry_cnt > 7) {
        goto err_inval;
    }
    if ((mask & IBV_QP_RNR_RETRY) && attr->rnr_retry > 7) {
        goto err_inval;
    }
    if ((mask & IBV_QP_MIN_RNR_TIMER) && attr->min_rnr_timer > 31) {
        goto err_inval;
    }
    if ((mask & IBV_QP_TIMEOUT) && attr->timeout > 31) {
        goto err_inval;
    }
    if (mask & IBV_QP_ACCESS_FLAGS) {
        qp->access = (int)attr->qp_access_flags;
    }
    if (mask & IBV_QP_PORT) {
        qp->port = attr->port_num;
    }
    if (mask & IBV_QP_PKEY_INDEX) {
        qp->pkey_index = attr->pkey_index;
    }
    if (mask & IBV_QP_PATH_MTU) {
        qp->path_mtu = attr->path_mtu;
    }
    if (mask & IBV_QP_DEST_QPN) {
        qp->dest_qpn = attr->dest_qp_num;
    }
    if (mask & IBV_QP_RQ_PSN) {
        qp->rq_psn = attr->rq_psn;
    }
    if (mask & IBV_QP_SQ_PSN) {
        qp->sq_psn = attr->sq_psn;
    }
    if (mask & IBV_QP_MAX_DEST_RD_ATOMIC) {
        qp->max_dest_rd_atomic = attr->max_dest_rd_atomic;
    }
    if (mask & IBV_QP_MAX_QP_RD_ATOMIC) {
        qp->max_rd_atomic = attr->max_rd_atomic;
    }
    if (mask & IBV_QP_MIN_RNR_TIMER) {
        qp->min_rnr_timer = attr->min_rnr_timer;
    }
    if (mask & IBV_QP_RETRY_CNT) {
        qp->retry_cnt = attr->retry_cnt;
    }
    if (mask & IBV_QP_RNR_RETRY) {
        qp->rnr_retry = attr->rnr_retry;
    }
    if (mask & IBV_QP_TIMEOUT) {
        qp->timeout = attr->timeout;
    }
    if (to != cur) {
        fv_dbg("QP 0x%x: %s -> %s", ibqp->qp_num, state_name(cur), state_name(to));
    }
    if (to == IBV_QPS_ERR) {
        qp_to_err(qp, "ibv_modify_qp to ERR");
    } else if (to == IBV_QPS_RESET) {
        qp_reset_queues(qp);
        qp_close_wire(c, qp);
        qp->peer_dead = false;
        qp->hw        = IBV_QPS_RESET;
    } else {
        qp->hw = to;
    }
    qp->qp.state = qp->hw;
    pthread_mutex_unlock(&c->lock);
    ring_bell(c);
    return 0;
err_inval:
    pthread_mutex_unlock(&c->lock);
    return EINVAL;
}

FV_EXPORT int ibv_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int mask,
                           struct ibv_qp_init_attr *init)
{
    struct fv_qp *qp = (struct fv_qp *)ibqp;
    struct fv_ctx *c = ctx_of(ibqp->context);
    pthread_mutex_lock(&c->lock);
    memset(attr, 0, sizeof(*attr));
    memset(init, 0, sizeof(*init));
    qp->qp.state             = qp->hw;
    attr->qp_state           = qp->hw;
    attr->cur_qp_state       = qp->hw;
    attr->path_mtu           = qp->path_mtu;
    attr->qp_access_flags    = (unsigned)qp->access;
    attr->pkey_index         = qp->pkey_index;
    attr->port_num           = qp->port;
    attr->dest_qp_num        = qp->dest_qpn;
    attr->rq_psn             = qp->rq_psn;
    attr->sq_psn             = qp->sq_psn;
    attr->max_rd_atomic      = qp->max_rd_atomic;
    attr->max_dest_rd_atomic = qp->max_dest_rd_atomic;
    attr->min_rnr_timer      = qp->min_rnr_timer;
    attr->timeout            = qp->timeout;
    attr->retry_cnt          = qp->retry_cnt;
    attr->rnr_retry          = qp->rnr_retry;
    attr->ah_attr            = qp->ah;
    attr->cap                = qp->cap;
    init->qp_context         = qp->qp.qp_context;
    init->send_cq            = qp->qp.send_cq;
    init->recv_cq            = qp->qp.recv_cq;
    init->cap                = qp->cap;
    init->qp_type            = IBV_QPT_RC;
    init->sq_sig_all         = qp->sq_sig_all;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Completions of the queues (device lock held) */

static void wc_init(struct ibv_wc *wc, struct fv_qp *qp, uint64_t wr_id, enum ibv_wc_status st)
{
    memset(wc, 0, sizeof(*wc));
    wc->wr_id  = wr_id;
    wc->status = st;
    wc->qp_num = qp->qp.qp_num;
    if (st != IBV_WC_SUCCESS) {
        wc->vendor_err = 0xf0 + (uint32_t)st;
    }
}

static enum ibv_wc_opcode wc_opcode_of(enum ibv_wr_opcode op)
{
    switch (op) {
    case IBV_WR_RDMA_WRITE:
    case IBV_WR_RDMA_WRITE_WITH_IMM:
        return IBV_WC_RDMA_WRITE;
    case IBV_WR_RDMA_READ:
        return IBV_WC_RDMA_READ;
    default:
        return IBV_WC_SEND;
    }
}

/* Completes the send WR at the head of the queue. */
static void sq_complete_head(struct fv_ctx *c, struct fv_qp *qp, enum ibv_wc_status st)
{
    struct fv_swr *w = &qp->sq[qp->sq_head];
    if (w->signaled || st != IBV_WC_SUCCESS) {
        struct ibv_wc wc;
        wc_init(&wc, qp, w->wr_id, st);
        wc.opcode   = wc_opcode_of(w->opcode);
        wc.byte_len = w->opcode == IBV_WR_RDMA_READ ? w->len : 0;
        cq_push(c, (struct fv_cq *)qp->qp.send_cq, &wc, false);
        /* the slots of earlier unsignaled WRs are free once a later one completes */
        qp->sq_unsignaled = 0;
    } else {
        qp->sq_unsignaled++;
    }
    if (st != IBV_WC_SUCCESS) {
        fv_dbg("QP 0x%x: send WR 0x%llx completes with %s", qp->qp.qp_num,
               (unsigned long long)w->wr_id, ibv_wc_status_str(st));
    }
    swr_free(w);
    qp->sq_head = (qp->sq_head + 1) % (int)qp->cap.max_send_wr;
    qp->sq_count--;
}

/* Completes acknowledged and failed WRs from the head, in order. */
static void sq_retire(struct fv_ctx *c, struct fv_qp *qp)
{
    while (qp->sq_count > 0) {
        struct fv_swr *w = &qp->sq[qp->sq_head];
        if (w->state == WR_DONE) {
            sq_complete_head(c, qp, IBV_WC_SUCCESS);
        } else if (w->state == WR_FAILED) {
            enum ibv_wc_status st = w->err;
            sq_complete_head(c, qp, st);
            qp_to_err(qp, ibv_wc_status_str(st));
            return;
        } else {
            return;
        }
    }
}

static void qp_to_err(struct fv_qp *qp, const char *why)
{
    struct fv_ctx *c = ctx_of(qp->qp.context);
    if (qp->hw != IBV_QPS_ERR) {
        fv_dbg("QP 0x%x: %s -> ERR (%s)", qp->qp.qp_num, state_name(qp->hw), why);
    }
    qp->hw        = IBV_QPS_ERR;
    qp->rnr_until = 0;
    while (qp->sq_count > 0) {
        sq_complete_head(c, qp, IBV_WC_WR_FLUSH_ERR);
    }
    qp->sq_unsignaled = 0;
    while (qp->rq_count > 0) {
        struct fv_rwr *r = &qp->rq[qp->rq_head];
        struct ibv_wc wc;
        wc_init(&wc, qp, r->wr_id, IBV_WC_WR_FLUSH_ERR);
        wc.opcode = IBV_WC_RECV;
        cq_push(c, (struct fv_cq *)qp->qp.recv_cq, &wc, false);
        qp->rq_head = (qp->rq_head + 1) % (int)qp->cap.max_recv_wr;
        qp->rq_count--;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Posting */

static int fv_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
    struct fv_qp *qp = (struct fv_qp *)ibqp;
    struct fv_ctx *c = ctx_of(ibqp->context);
    int ret          = 0;
    pthread_mutex_lock(&c->lock);
    for (; wr != NULL; wr = wr->next) {
        struct fv_swr *w;
        uint64_t len         = 0;
        enum ibv_qp_state st = qp->hw;
        if (st != IBV_QPS_RTS && st != IBV_QPS_ERR) {
            fv_log("ibv_post_send(QP 0x%x): QP is in state %s, not RTS", ibqp->qp_num,
                   state_name(st));
            ret = EINVAL;
            break;
        }
        if (wr->opcode != IBV_WR_RDMA_WRITE && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM &&
            wr->opcode != IBV_WR_SEND && wr->opcode != IBV_WR_SEND_WITH_IMM &&
            wr->opcode != IBV_WR_RDMA_READ) {
            fv_log("ibv_post_send(QP 0x%x): opcode %d not supported by the fake", ibqp->qp_num,
                   wr->opcode);
            ret = EINVAL;
            break;
        }
        if (wr->num_sge < 0 || wr->num_sge > (int)qp->cap.max_send_sge) {
            fv_dbg("ibv_post_send(QP 0x%x): %d SGEs, the QP allows %u", ibqp->qp_num, wr->num_sge,
                   qp->cap.max_send_sge);
            ret = EINVAL;
            break;
        }
        if (qp->sq_count + qp->sq_unsignaled >= (int)qp->cap.max_send_wr) {
            fv_dbg("ibv_post_send(QP 0x%x): send queue full (%u WRs)", ibqp->qp_num,
                   qp->cap.max_send_wr);
            ret = ENOMEM;
            break;
        }
        for (int i = 0; i < wr->num_sge; i++) {
            len += wr->sg_list[i].length;
        }
        if ((wr->send_flags & IBV_SEND_INLINE) &&
            (len > qp->cap.max_inline_data || wr->opcode == IBV_WR_RDMA_READ)) {
            fv_dbg("ibv_post_send(QP 0x%x): inline data of %llu bytes, the QP allows %u",
                   ibqp->qp_num, (unsigned long long)len, qp->cap.max_inline_data);
            ret = EINVAL;
            break;
        }
        if (len > FV_MAX_MSG) {
            ret = EINVAL;
            break;
        }
        /* the unsignaled WRs' slots count at the head; place after the queued ones */
        w = &qp->sq[(qp->sq_head + qp->sq_count) % (int)qp->cap.max_send_wr];
        memset(w, 0, sizeof(*w));
        w->wr_id     = wr->wr_id;
        w->opcode    = wr->opcode;
        w->signaled  = qp->sq_sig_all || (wr->send_flags & IBV_SEND_SIGNALED);
        w->solicited = (wr->send_flags & IBV_SEND_SOLICITED) != 0;
        w->len       = (uint32_t)len;
        w->nsge      = wr->num_sge;
        if (wr->num_sge > 0) {
            memcpy(w->sge, wr->sg_list, sizeof(struct ibv_sge) * (size_t)wr->num_sge);
        }
        w->imm = wr->imm_data;
        if (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM ||
            wr->opcode == IBV_WR_RDMA_READ) {
            w->raddr = wr->wr.rdma.remote_addr;
            w->rkey  = wr->wr.rdma.rkey;
        }
        if (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
            long n = atomic_fetch_add(&g_rdma_writes, 1) + 1;
            if (g_fault_bad_rkey != 0 && n == g_fault_bad_rkey) {
                fv_log("fault injected: RDMA write #%ld goes out with a corrupted rkey", n);
                w->rkey ^= 0xa5000000u;
            }
        }
        if (wr->send_flags & IBV_SEND_INLINE) {
            size_t off = 0;
            w->inl     = malloc(len ? len : 1);
            if (w->inl == NULL) {
                ret = ENOMEM;
                break;
            }
            for (int i = 0; i < wr->num_sge; i++) {
                memcpy(w->inl + off, (void *)(uintptr_t)wr->sg_list[i].addr, wr->sg_list[i].length);
                off += wr->sg_list[i].length;
            }
        }
        w->state = WR_QUEUED;
        qp->sq_count++;
        if (st == IBV_QPS_ERR) {
            /* a QP in the error state completes new WRs with a flush error */
            sq_complete_head(c, qp, IBV_WC_WR_FLUSH_ERR);
        }
    }
    if (ret != 0) {
        *bad = wr;
    }
    pthread_mutex_unlock(&c->lock);
    ring_bell(c);
    return ret;
}

static int fv_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
    struct fv_qp *qp = (struct fv_qp *)ibqp;
    struct fv_ctx *c = ctx_of(ibqp->context);
    int ret          = 0;
    pthread_mutex_lock(&c->lock);
    for (; wr != NULL; wr = wr->next) {
        struct fv_rwr *r;
        long n;
        if (qp->hw == IBV_QPS_RESET) {
            fv_log("ibv_post_recv(QP 0x%x): QP is in state RESET", ibqp->qp_num);
            ret = EINVAL;
            break;
        }
        if (wr->num_sge < 0 || wr->num_sge > (int)qp->cap.max_recv_sge) {
            fv_dbg("ibv_post_recv(QP 0x%x): %d SGEs, the QP allows %u", ibqp->qp_num, wr->num_sge,
                   qp->cap.max_recv_sge);
            ret = EINVAL;
            break;
        }
        if (qp->rq_count >= (int)qp->cap.max_recv_wr) {
            fv_dbg("ibv_post_recv(QP 0x%x): receive queue full (%u WRs)", ibqp->qp_num,
                   qp->cap.max_recv_wr);
            ret = ENOMEM;
            break;
        }
        n = atomic_fetch_add(&g_recvs_posted, 1) + 1;
        if (g_fault_starve_recv != 0 && (g_fault_starve_recv == -2 || n > g_fault_starve_recv)) {
            fv_dbg("fault injected: receive #%ld dropped", n);
            continue;
        }
        r        = &qp->rq[(qp->rq_head + qp->rq_count) % (int)qp->cap.max_recv_wr];
        r->wr_id = wr->wr_id;
        r->nsge  = wr->num_sge;
        if (wr->num_sge > 0) {
            memcpy(r->sge, wr->sg_list, sizeof(struct ibv_sge) * (size_t)wr->num_sge);
        }
        qp->rq_count++;
        if (qp->hw == IBV_QPS_ERR) {
            struct ibv_wc wc;
            wc_init(&wc, qp, r->wr_id, IBV_WC_WR_FLUSH_ERR);
            wc.opcode = IBV_WC_RECV;
            cq_push(c, (struct fv_cq *)qp->qp.recv_cq, &wc, false);
            qp->rq_count--;
        }
    }
    if (ret != 0) {
        *bad = wr;
    }
    pthread_mutex_unlock(&c->lock);
    ring_bell(c);
    return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* The wire (device lock held) */

static int out_append(struct fv_qp *qp, const void *a, size_t alen, const void *b, size_t blen)
{
    size_t need;
    if (qp->ooff > 0) {
        /* drop what the socket has taken, so that a busy connection's buffer does not grow */
        memmove(qp->obuf, qp->obuf + qp->ooff, qp->olen - qp->ooff);
        qp->olen -= qp->ooff;
        qp->ooff = 0;
    }
    need = qp->olen + alen + blen;
    if (need > qp->ocap) {
        size_t cap = qp->ocap ? qp->ocap : 4096;
        uint8_t *n;
        while (cap < need) {
            cap *= 2;
        }
        n = realloc(qp->obuf, cap);
        if (n == NULL) {
            return -1;
        }
        qp->obuf = n;
        qp->ocap = cap;
    }
    memcpy(qp->obuf + qp->olen, a, alen);
    if (blen) {
        memcpy(qp->obuf + qp->olen + alen, b, blen);
    }
    qp->olen += alen + blen;
    return 0;
}

static void send_ctl(struct fv_qp *qp, enum fv_type type, enum fv_ack status, uint32_t psn,
                     const void *data, uint32_t len)
{
    struct fv_hdr h = {.magic     = FV_MAGIC,
                       .type      = (uint8_t)type,
                       .status    = (uint8_t)status,
                       .rnr_timer = qp->min_rnr_timer,
                       .psn       = psn,
                       .len       = len};
    if (qp->fd < 0 || qp->peer_dead) {
        return;
    }
    if (out_append(qp, &h, sizeof(h), data, len) != 0) {
        fv_log("QP 0x%x: out of memory for a control frame", qp->qp.qp_num);
    }
}

/* 4.096 us * 2^timeout * (retry_cnt + 1); timeout 0 waits forever */
static uint64_t ack_timeout_ns(const struct fv_qp *qp)
{
    if (qp->timeout == 0) {
        return 0;
    }
    return 4096ull * (1ull << qp->timeout) * (qp->retry_cnt + 1u);
}

/* The RNR NAK timer encoding of the IBTA spec, in microseconds. */
static uint64_t rnr_delay_us(uint8_t t)
{
    static const uint32_t us[32] = {655360, 10,    20,    30,     40,     60,     80,     120,
                                    160,    240,   320,   480,    640,    960,    1280,   1920,
                                    2560,   3840,  5120,  7680,   10240,  15360,  20480,  30720,
                                    40960,  61440, 81920, 122880, 163840, 245760, 327680, 491520};
    return us[t & 31];
}

/* Builds the frame of a send WR: header and gathered data; LOC_PROT_ERR on a bad lkey. */
static int build_frame(struct fv_ctx *c, struct fv_qp *qp, struct fv_swr *w)
{
    struct fv_hdr h = {.magic     = FV_MAGIC,
                       .psn       = w->psn,
                       .imm       = w->imm,
                       .rkey      = w->rkey,
                       .len       = w->len,
                       .raddr     = w->raddr,
                       .solicited = w->solicited};
    size_t paylen   = w->opcode == IBV_WR_RDMA_READ ? 0 : w->len;
    size_t off      = sizeof(h);
    switch (w->opcode) {
    case IBV_WR_RDMA_WRITE:
        h.type = T_WRITE;
        break;
    case IBV_WR_RDMA_WRITE_WITH_IMM:
        h.type = T_WRITE_IMM;
        break;
    case IBV_WR_SEND:
        h.type = T_SEND;
        break;
    case IBV_WR_SEND_WITH_IMM:
        h.type = T_SEND_IMM;
        break;
    default:
        h.type = T_READ;
        break;
    }
    w->frame = malloc(sizeof(h) + paylen);
    if (w->frame == NULL) {
        return -1;
    }
    memcpy(w->frame, &h, sizeof(h));
    if (w->inl != NULL) {
        memcpy(w->frame + off, w->inl, paylen);
    } else {
        for (int i = 0; i < w->nsge; i++) {
            const struct ibv_sge *s = &w->sge[i];
            int need                = w->opcode == IBV_WR_RDMA_READ ? IBV_ACCESS_LOCAL_WRITE : 0;
            uint8_t *p              = mr_lookup(c, qp->qp.pd, s->lkey, s->addr, s->length, need);
            if (p == NULL) {
                fv_dbg("QP 0x%x: sge %d (lkey 0x%x, 0x%llx+%u) not in a local MR of the QP's PD",
                       qp->qp.qp_num, i, s->lkey, (unsigned long long)s->addr, s->length);
                free(w->frame);
                w->frame = NULL;
                return 1;
            }
            if (paylen != 0) {
                memcpy(w->frame + off, p, s->length);
                off += s->length;
            }
        }
    }
    w->framelen = sizeof(h) + paylen;
    return 0;
}

static void sq_transmit(struct fv_ctx *c, struct fv_qp *qp, uint64_t now)
{
    uint64_t tmo = ack_timeout_ns(qp);
    if (qp->hw != IBV_QPS_RTS || (qp->rnr_until != 0 && now < qp->rnr_until)) {
        return;
    }
    qp->rnr_until = 0;
    for (int i = 0; i < qp->sq_count; i++) {
        struct fv_swr *w = &qp->sq[(qp->sq_head + i) % (int)qp->cap.max_send_wr];
        if (w->state == WR_FAILED) {
            break; /* nothing after a failed WR goes out: it completes in error in order */
        }
        if (w->state != WR_QUEUED) {
            continue;
        }
        if (qp->fd < 0 || qp->peer_dead) {
            /* nobody answers: the transport's retries run out */
            if (qp->fd < 0 && tmo != 0 && w->deadline == 0) {
                w->deadline = now + tmo;
                continue;
            }
            if (qp->fd < 0 && (tmo == 0 || now < w->deadline)) {
                continue;
            }
            w->state = WR_FAILED;
            w->err   = IBV_WC_RETRY_EXC_ERR;
            break;
        }
        if (w->frame == NULL) {
            int r;
            w->psn     = qp->next_psn++;
            w->has_psn = true;
            r          = build_frame(c, qp, w);
            if (r != 0) {
                w->state = WR_FAILED;
                w->err   = r > 0 ? IBV_WC_LOC_PROT_ERR : IBV_WC_GENERAL_ERR;
                break;
            }
        }
        if (out_append(qp, w->frame, w->framelen, NULL, 0) != 0) {
            w->state = WR_FAILED;
            w->err   = IBV_WC_GENERAL_ERR;
            break;
        }
        w->state = WR_SENT;
        if (tmo != 0 && qp->tdeadline == 0) {
            qp->tdeadline = now + tmo;
        }
    }
    sq_retire(c, qp);
}

static struct fv_swr *swr_by_psn(struct fv_qp *qp, uint32_t psn)
{
    for (int i = 0; i < qp->sq_count; i++) {
        struct fv_swr *w = &qp->sq[(qp->sq_head + i) % (int)qp->cap.max_send_wr];
        if (w->has_psn && w->psn == psn) {
            return w;
        }
    }
    return NULL;
}

/* The requester's side: an acknowledgement, NAK or read response for psn. */
static void handle_ack(struct fv_ctx *c, struct fv_qp *qp, const struct fv_hdr *h,
                       const uint8_t *data, uint64_t now)
{
    struct fv_swr *w = swr_by_psn(qp, h->psn);
    if (qp->hw != IBV_QPS_RTS || w == NULL || w->state != WR_SENT) {
        return; /* a stale answer */
    }
    if (h->type == T_READ_RESP) {
        size_t off = 0;
        for (int i = 0; i < w->nsge; i++) {
            const struct ibv_sge *s = &w->sge[i];
            uint8_t *p =
                mr_lookup(c, qp->qp.pd, s->lkey, s->addr, s->length, IBV_ACCESS_LOCAL_WRITE);
            if (p == NULL) {
                w->state = WR_FAILED;
                w->err   = IBV_WC_LOC_PROT_ERR;
                goto out;
            }
            memcpy(p, data + off, s->length);
            off += s->length;
        }
    } else if (h->status == A_RNR) {
        w->rnr_count++;
        if (qp->rnr_retry != 7 && w->rnr_count > qp->rnr_retry) {
            fv_dbg("QP 0x%x: RNR retries exhausted (%u)", qp->qp.qp_num, qp->rnr_retry);
            w->state = WR_FAILED;
            w->err   = IBV_WC_RNR_RETRY_EXC_ERR;
            goto out;
        }
        fv_dbg("QP 0x%x: RNR NAK for psn %u, retry %d after %llu us", qp->qp.qp_num, h->psn,
               w->rnr_count, (unsigned long long)rnr_delay_us(h->rnr_timer));
        /* go back: this WR and every later one sent go out again after the RNR timer */
        for (int i = 0; i < qp->sq_count; i++) {
            struct fv_swr *x = &qp->sq[(qp->sq_head + i) % (int)qp->cap.max_send_wr];
            if (x->state == WR_SENT && (int32_t)(x->psn - h->psn) >= 0) {
                x->state = WR_QUEUED;
            }
        }
        qp->rnr_until = now + rnr_delay_us(h->rnr_timer) * 1000;
        qp->tdeadline = 0;
        return;
    } else if (h->status != A_OK) {
        w->state = WR_FAILED;
        w->err   = h->status == A_ACCESS    ? IBV_WC_REM_ACCESS_ERR
                   : h->status == A_INV_REQ ? IBV_WC_REM_INV_REQ_ERR
                                            : IBV_WC_REM_OP_ERR;
        goto out;
    }
    /* acknowledgements are cumulative: everything sent before psn is done too; the transport
     * timer starts over for what remains */
    qp->tdeadline = qp->tdeadline != 0 ? now + ack_timeout_ns(qp) : 0;
    for (int i = 0; i < qp->sq_count; i++) {
        struct fv_swr *x = &qp->sq[(qp->sq_head + i) % (int)qp->cap.max_send_wr];
        if (x->state == WR_SENT && (int32_t)(x->psn - h->psn) <= 0 &&
            (x->opcode != IBV_WR_RDMA_READ || x == w)) {
            x->state = WR_DONE;
        }
    }
out:
    sq_retire(c, qp);
}

static bool rq_scatter(struct fv_ctx *c, struct fv_qp *qp, struct fv_rwr *r, const uint8_t *data,
                       uint32_t len, enum ibv_wc_status *st)
{
    size_t cap = 0, off = 0;
    for (int i = 0; i < r->nsge; i++) {
        cap += r->sge[i].length;
    }
    if (cap < len) {
        *st = IBV_WC_LOC_LEN_ERR;
        return false;
    }
    for (int i = 0; i < r->nsge && off < len; i++) {
        const struct ibv_sge *s = &r->sge[i];
        uint32_t n              = len - off < s->length ? (uint32_t)(len - off) : s->length;
        uint8_t *p = mr_lookup(c, qp->qp.pd, s->lkey, s->addr, n, IBV_ACCESS_LOCAL_WRITE);
        if (p == NULL) {
            *st = IBV_WC_LOC_PROT_ERR;
            return false;
        }
        memcpy(p, data + off, n);
        off += n;
    }
    return true;
}

/* The responder's side of a request frame. */
static void handle_request(struct fv_ctx *c, struct fv_qp *qp, const struct fv_hdr *h,
                           uint8_t *data)
{
    bool needs_recv        = h->type != T_WRITE && h->type != T_READ;
    uint8_t *dst           = NULL;
    enum ibv_wc_status rst = IBV_WC_SUCCESS;
    if (qp->hw != IBV_QPS_RTR && qp->hw != IBV_QPS_RTS) {
        return; /* a QP that is not receiving does not answer: the requester times out */
    }
    if (h->psn != qp->expected_psn) {
        if ((int32_t)(h->psn - qp->expected_psn) < 0) {
            send_ctl(qp, T_ACK, A_OK, h->psn, NULL, 0); /* a duplicate */
        }
        return; /* after a NAK, until the NAKed request comes again */
    }
    if (h->type == T_READ && qp->max_dest_rd_atomic == 0) {
        /* a responder with no RDMA read resources (responder_resources 0) cannot serve one */
        fv_dbg("QP 0x%x: RDMA read with max_dest_rd_atomic 0: invalid request", qp->qp.qp_num);
        send_ctl(qp, T_ACK, A_INV_REQ, h->psn, NULL, 0);
        qp_to_err(qp, "invalid request");
        return;
    }
    if (h->type == T_WRITE || h->type == T_WRITE_IMM || h->type == T_READ) {
        int need = h->type == T_READ ? IBV_ACCESS_REMOTE_READ : IBV_ACCESS_REMOTE_WRITE;
        dst = (qp->access & need) ? mr_lookup(c, qp->qp.pd, h->rkey, h->raddr, h->len, need) : NULL;
        if (dst == NULL && h->len != 0) {
            fv_dbg("QP 0x%x: remote access error (rkey 0x%x, 0x%llx+%u, need %s)", qp->qp.qp_num,
                   h->rkey, (unsigned long long)h->raddr, h->len,
                   need == IBV_ACCESS_REMOTE_READ ? "remote read" : "remote write");
            send_ctl(qp, T_ACK, A_ACCESS, h->psn, NULL, 0);
            qp_to_err(qp, "remote access error");
            return;
        }
    }
    if (needs_recv && qp->rq_count == 0) {
        fv_dbg("QP 0x%x: no receive posted: RNR NAK psn %u", qp->qp.qp_num, h->psn);
        send_ctl(qp, T_ACK, A_RNR, h->psn, NULL, 0);
        return;
    }
    if (needs_recv) {
        struct fv_rwr *r = &qp->rq[qp->rq_head];
        struct ibv_wc wc;
        bool is_send = h->type == T_SEND || h->type == T_SEND_IMM;
        if (is_send && !rq_scatter(c, qp, r, data, h->len, &rst)) {
            wc_init(&wc, qp, r->wr_id, rst);
            wc.opcode = IBV_WC_RECV;
            cq_push(c, (struct fv_cq *)qp->qp.recv_cq, &wc, false);
            qp->rq_head = (qp->rq_head + 1) % (int)qp->cap.max_recv_wr;
            qp->rq_count--;
            send_ctl(qp, T_ACK, rst == IBV_WC_LOC_LEN_ERR ? A_INV_REQ : A_OP_ERR, h->psn, NULL, 0);
            qp_to_err(qp, ibv_wc_status_str(rst));
            return;
        }
        if (!is_send && h->len != 0) {
            memcpy(dst, data, h->len);
        }
        wc_init(&wc, qp, r->wr_id, IBV_WC_SUCCESS);
        wc.opcode   = is_send ? IBV_WC_RECV : IBV_WC_RECV_RDMA_WITH_IMM;
        wc.byte_len = h->len;
        if (h->type != T_SEND) {
            wc.wc_flags = IBV_WC_WITH_IMM;
            wc.imm_data = h->imm;
        }
        wc.src_qp   = qp->dest_qpn;
        qp->rq_head = (qp->rq_head + 1) % (int)qp->cap.max_recv_wr;
        qp->rq_count--;
        cq_push(c, (struct fv_cq *)qp->qp.recv_cq, &wc, h->solicited != 0);
    } else if (h->type == T_WRITE && h->len != 0) {
        memcpy(dst, data, h->len);
    }
    qp->expected_psn++;
    if (h->type == T_READ) {
        send_ctl(qp, T_READ_RESP, A_OK, h->psn, dst, h->len);
    } else {
        send_ctl(qp, T_ACK, A_OK, h->psn, NULL, 0);
    }
}

static void peer_gone(struct fv_ctx *c, struct fv_qp *qp, const char *why)
{
    fv_dbg("QP 0x%x: peer gone (%s)", qp->qp.qp_num, why);
    qp->peer_dead = true;
    epoll_ctl(c->epfd, EPOLL_CTL_DEL, qp->fd, NULL);
    qp->want_out = false;
    /* the WR in flight (or the next one) runs out of retries; the rest flush */
    for (int i = 0; i < qp->sq_count; i++) {
        struct fv_swr *w = &qp->sq[(qp->sq_head + i) % (int)qp->cap.max_send_wr];
        if (w->state == WR_SENT || w->state == WR_QUEUED) {
            if (qp->hw == IBV_QPS_RTS) {
                w->state = WR_FAILED;
                w->err   = IBV_WC_RETRY_EXC_ERR;
            }
            break;
        }
    }
    sq_retire(c, qp);
    if (qp->hook != NULL) {
        qp->hook(qp->hook_arg, FV_CM_EOF);
    }
}

static void handle_frame(struct fv_ctx *c, struct fv_qp *qp, uint64_t now)
{
    const struct fv_hdr *h = &qp->ih;
    switch (h->type) {
    case T_WRITE:
    case T_WRITE_IMM:
    case T_SEND:
    case T_SEND_IMM:
    case T_READ:
        handle_request(c, qp, h, qp->ipay);
        break;
    case T_ACK:
    case T_READ_RESP:
        handle_ack(c, qp, h, qp->ipay, now);
        break;
    case T_DREQ:
        fv_dbg("QP 0x%x: disconnect request", qp->qp.qp_num);
        send_ctl(qp, T_DREP, A_OK, 0, NULL, 0);
        if (qp->hook != NULL) {
            qp->hook(qp->hook_arg, FV_CM_DREQ);
        }
        break;
    case T_DREP:
        if (qp->hook != NULL) {
            qp->hook(qp->hook_arg, FV_CM_DREP);
        }
        break;
    default:
        break;
    }
}

/* Reads what the socket has; whole frames are handled as they complete. */
static void qp_input(struct fv_ctx *c, struct fv_qp *qp, uint64_t now)
{
    for (int rounds = 0; rounds < 256 && qp->fd >= 0 && !qp->peer_dead; rounds++) {
        ssize_t n;
        if (qp->igot < sizeof(qp->ih)) {
            n = recv(qp->fd, (uint8_t *)&qp->ih + qp->igot, sizeof(qp->ih) - qp->igot, 0);
        } else {
            bool has_pay = qp->ih.type != T_READ && qp->ih.type != T_ACK;
            size_t want  = has_pay ? qp->ih.len : 0;
            if (qp->ipay == NULL && want > 0) {
                qp->ipay = malloc(want);
                if (qp->ipay == NULL) {
                    peer_gone(c, qp, "out of memory for a frame");
                    return;
                }
            }
            if (qp->ipay_got == want) {
                handle_frame(c, qp, now);
                free(qp->ipay);
                qp->ipay     = NULL;
                qp->ipay_got = 0;
                qp->igot     = 0;
                continue;
            }
            n = recv(qp->fd, qp->ipay + qp->ipay_got, want - qp->ipay_got, 0);
            if (n > 0) {
                qp->ipay_got += (size_t)n;
                continue;
            }
        }
        if (n == 0) {
            peer_gone(c, qp, "connection closed");
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            if (errno == EINTR) {
                continue;
            }
            peer_gone(c, qp, strerror(errno));
            return;
        }
        qp->igot += (size_t)n;
        if (qp->igot == sizeof(qp->ih) && qp->ih.magic != FV_MAGIC) {
            peer_gone(c, qp, "garbage on the wire");
            return;
        }
    }
}

static void qp_output(struct fv_ctx *c, struct fv_qp *qp)
{
    bool want;
    while (qp->fd >= 0 && !qp->peer_dead && qp->ooff < qp->olen) {
        ssize_t n = send(qp->fd, qp->obuf + qp->ooff, qp->olen - qp->ooff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                peer_gone(c, qp, strerror(errno));
                return;
            }
            break;
        }
        qp->ooff += (size_t)n;
        if (n > 0 && qp->tdeadline != 0) {
            qp->tdeadline = now_ns() + ack_timeout_ns(qp);
        }
    }
    if (qp->ooff == qp->olen) {
        qp->ooff = qp->olen = 0;
    }
    want = qp->ooff < qp->olen;
    if (qp->fd >= 0 && !qp->peer_dead && want != qp->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = qp};
        epoll_ctl(c->epfd, EPOLL_CTL_MOD, qp->fd, &ev);
        qp->want_out = want;
    }
}

/* Send WRs whose acknowledgement did not come in time. */
static void qp_timers(struct fv_ctx *c, struct fv_qp *qp, uint64_t now, uint64_t *next)
{
    if (qp->hw != IBV_QPS_RTS) {
        return;
    }
    if (qp->rnr_until != 0) {
        if (now >= qp->rnr_until) {
            sq_transmit(c, qp, now);
        } else if (qp->rnr_until < *next) {
            *next = qp->rnr_until;
        }
        return;
    }
    for (int i = 0; i < qp->sq_count; i++) {
        struct fv_swr *w = &qp->sq[(qp->sq_head + i) % (int)qp->cap.max_send_wr];
        if (w->state == WR_SENT) {
            /* the oldest request waiting for its acknowledgement */
            if (qp->tdeadline == 0) {
                return;
            }
            if (now >= qp->tdeadline) {
                fv_dbg("QP 0x%x: no acknowledgement in %llu us: retries exhausted", qp->qp.qp_num,
                       (unsigned long long)(ack_timeout_ns(qp) / 1000));
                qp->tdeadline = 0;
                w->state      = WR_FAILED;
                w->err        = IBV_WC_RETRY_EXC_ERR;
                sq_retire(c, qp);
            } else if (qp->tdeadline < *next) {
                *next = qp->tdeadline;
            }
            return;
        }
        if (w->state == WR_QUEUED && qp->fd < 0 && w->deadline != 0) {
            if (now >= w->deadline) {
                fv_dbg("QP 0x%x: no acknowledgement in %llu us: retries exhausted", qp->qp.qp_num,
                       (unsigned long long)(ack_timeout_ns(qp) / 1000));
                w->state = WR_FAILED;
                w->err   = IBV_WC_RETRY_EXC_ERR;
                sq_retire(c, qp);
            } else if (w->deadline < *next) {
                *next = w->deadline;
            }
            return;
        }
    }
    qp->tdeadline = 0;
}

static void *nic_main(void *arg)
{
    struct fv_ctx *c = arg;
    int wait_ms      = -1;
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(c->epfd, evs, 64, wait_ms);
        uint64_t now, next = UINT64_MAX;
        uint64_t junk;
        if (n < 0 && errno != EINTR) {
            fv_log("NIC thread: epoll_wait: %s", strerror(errno));
            return NULL;
        }
        if (read(c->bell, &junk, sizeof(junk)) < 0 && errno != EAGAIN) {
            fv_log("NIC thread: doorbell read: %s", strerror(errno));
        }
        pthread_mutex_lock(&c->lock);
        if (c->stop) {
            pthread_mutex_unlock(&c->lock);
            return NULL;
        }
        now = now_ns();
        for (struct fv_qp *qp = c->qps; qp != NULL; qp = qp->next) {
            qp_input(c, qp, now);
            sq_transmit(c, qp, now);
            qp_output(c, qp);
        }
        /* answers produced while reading other QPs go out too */
        for (struct fv_qp *qp = c->qps; qp != NULL; qp = qp->next) {
            qp_timers(c, qp, now, &next);
            qp_output(c, qp);
        }
        if (c->overrun) {
            c->overrun = false;
            for (struct fv_qp *qp = c->qps; qp != NULL; qp = qp->next) {
                if (((struct fv_cq *)qp->qp.send_cq)->overrun ||
                    ((struct fv_cq *)qp->qp.recv_cq)->overrun) {
                    qp_to_err(qp, "CQ overrun");
                }
            }
        }
        pthread_mutex_unlock(&c->lock);
        if (next == UINT64_MAX) {
            wait_ms = -1;
        } else {
            uint64_t d = next > now ? next - now : 0;
            wait_ms    = (int)((d + 999999) / 1000000);
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* The calls of the fake librdmacm */

/* The QP numbered qpn of the device context (its lock held), or NULL. */
static struct fv_qp *qp_by_num(struct fv_ctx *c, uint32_t qpn)
{
    for (struct fv_qp *qp = c->qps; qp != NULL; qp = qp->next) {
        if (qp->qp.qp_num == qpn) {
            return qp;
        }
    }
    return NULL;
}

FV_EXPORT int fv_qp_attach(struct ibv_context *ctx, uint32_t qpn, int fd, uint32_t peer_qpn,
                           fv_cm_hook_fn hook, void *arg)
{
    struct fv_ctx *c      = ctx_of(ctx);
    struct epoll_event ev = {.events = EPOLLIN};
    int fl                = fcntl(fd, F_GETFL);
    struct fv_qp *qp;
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        return errno;
    }
    pthread_mutex_lock(&c->lock);
    qp = qp_by_num(c, qpn);
    if (qp == NULL) {
        pthread_mutex_unlock(&c->lock);
        return ENOENT;
    }
    if (qp->fd >= 0) {
        pthread_mutex_unlock(&c->lock);
        return EBUSY;
    }
    ev.data.ptr = qp;
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int err = errno;
        pthread_mutex_unlock(&c->lock);
        return err;
    }
    qp->fd        = fd;
    qp->dest_qpn  = peer_qpn;
    qp->peer_dead = false;
    qp->want_out  = false;
    qp->hook      = hook;
    qp->hook_arg  = arg;
    /* both ends start their sequence at 0: the fake's "PSN" counts requests, not packets */
    qp->next_psn     = 0;
    qp->expected_psn = 0;
    pthread_mutex_unlock(&c->lock);
    fv_dbg("QP 0x%x connected to QP 0x%x", qpn, peer_qpn);
    ring_bell(c);
    return 0;
}

FV_EXPORT void fv_qp_clear_hook(struct ibv_context *ctx, uint32_t qpn, void *arg)
{
    struct fv_ctx *c = ctx_of(ctx);
    struct fv_qp *qp;
    pthread_mutex_lock(&c->lock);
    qp = qp_by_num(c, qpn);
    if (qp != NULL && qp->hook_arg == arg) {
        qp->hook     = NULL;
        qp->hook_arg = NULL;
    }
    pthread_mutex_unlock(&c->lock);
}

FV_EXPORT int fv_qp_send_dreq(struct ibv_context *ctx, uint32_t qpn)
{
    struct fv_ctx *c = ctx_of(ctx);
    struct fv_qp *qp;
    int ret = 0;
    pthread_mutex_lock(&c->lock);
    qp = qp_by_num(c, qpn);
    if (qp == NULL || qp->fd < 0 || qp->peer_dead) {
        ret = ENOTCONN;
    } else {
        send_ctl(qp, T_DREQ, A_OK, 0, NULL, 0);
    }
    pthread_mutex_unlock(&c->lock);
    ring_bell(c);
    return ret;
}

FV_EXPORT int fv_qp_state(struct ibv_context *ctx, uint32_t qpn)
{
    struct fv_ctx *c = ctx_of(ctx);
    struct fv_qp *qp;
    int state = -1;
    pthread_mutex_lock(&c->lock);
    qp = qp_by_num(c, qpn);
    if (qp != NULL) {
        state = (int)qp->hw;
    }
    pthread_mutex_unlock(&c->lock);
    return state;
}

FV_EXPORT const char *fv_qp_state_str(int state)
{
    return state < 0 ? "gone" : state_name((enum ibv_qp_state)state);
}

/* ---------------------------------------------------------------------------------------- */
/* The rest of the libibverbs API: not modelled, and saying so */

FV_EXPORT struct ibv_srq *ibv_create_srq(struct ibv_pd *pd, struct ibv_srq_init_attr *attr)
{
    fv_unsupported("ibv_create_srq");
    return NULL;
}

FV_EXPORT int ibv_destroy_srq(struct ibv_srq *srq)
{
    fv_unsupported("ibv_destroy_srq");
    return ENOSYS;
}

FV_EXPORT int ibv_modify_srq(struct ibv_srq *srq, struct ibv_srq_attr *attr, int mask)
{
    fv_unsupported("ibv_modify_srq");
    return ENOSYS;
}

FV_EXPORT int ibv_query_srq(struct ibv_srq *srq, struct ibv_srq_attr *attr)
{
    fv_unsupported("ibv_query_srq");
    return ENOSYS;
}

FV_EXPORT struct ibv_ah *ibv_create_ah(struct ibv_pd *pd, struct ibv_ah_attr *attr)
{
    fv_unsupported("ibv_create_ah (address handles, UD)");
    return NULL;
}

FV_EXPORT int ibv_destroy_ah(struct ibv_ah *ah)
{
    fv_unsupported("ibv_destroy_ah");
    return ENOSYS;
}

FV_EXPORT int ibv_get_async_event(struct ibv_context *context, struct ibv_async_event *event)
{
    fv_unsupported("ibv_get_async_event (the fake raises no asynchronous events)");
    return -1;
}

FV_EXPORT void ibv_ack_async_event(struct ibv_async_event *event)
{
    fv_unsupported("ibv_ack_async_event");
}

FV_EXPORT int ibv_rereg_mr(struct ibv_mr *mr, int flags, struct ibv_pd *pd, void *addr,
                           size_t length, int access)
{
    fv_unsupported("ibv_rereg_mr");
    return ENOSYS;
}

FV_EXPORT int ibv_attach_mcast(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid)
{
    fv_unsupported("ibv_attach_mcast");
    return ENOSYS;
}

FV_EXPORT int ibv_detach_mcast(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid)
{
    fv_unsupported("ibv_detach_mcast");
    return ENOSYS;
}

FV_EXPORT struct ibv_context *ibv_import_device(int cmd_fd)
{
    fv_unsupported("ibv_import_device");
    return NULL;
}

FV_EXPORT struct ibv_qp_ex *ibv_qp_to_qp_ex(struct ibv_qp *qp)
{
    fv_unsupported("ibv_qp_to_qp_ex (the extended work request API)");
    return NULL;
}

FV_EXPORT int ibv_query_ece(struct ibv_qp *qp, struct ibv_ece *ece)
{
    fv_unsupported("ibv_query_ece");
    return ENOSYS;
}

FV_EXPORT int ibv_set_ece(struct ibv_qp *qp, struct ibv_ece *ece)
{
    fv_unsupported("ibv_set_ece");
    return ENOSYS;
}

FV_EXPORT int ibv_rate_to_mult(enum ibv_rate rate)
{
    fv_unsupported("ibv_rate_to_mult");
    return -1;
}

FV_EXPORT int ibv_rate_to_mbps(enum ibv_rate rate)
{
    fv_unsupported("ibv_rate_to_mbps");
    return -1;
}
