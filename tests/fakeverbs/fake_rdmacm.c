/* A fake librdmacm for tests (docs/verbs.md, "The fake provider"). Addresses are loopback IPv4 or
 * IPv6 socket addresses; a listening id on port P is the abstract UNIX socket
 * "fakeverbs-cm-P", and each connection is one UNIX stream socket between the two processes:
 * the connection messages (REQ, REP or REJ, RTU) travel on it, then it is handed to the NIC of
 * the QP's device (fake_ibverbs.c), which carries the QP's traffic and the disconnect messages.
 *
 * One process-wide thread serves the listening sockets and the connections being set up; one
 * lock (g_cm) guards the ids and sockets; each event channel has its own lock, which the NIC
 * thread takes to queue DISCONNECTED. Lock order: g_cm, then a device's lock, then a channel's. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/sa.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>

#include "fakeverbs_private.h"

#define FV_EXPORT __attribute__((visibility("default")))

/* The private data limits of the IB CM as librdmacm reports them (rdma_cma.h's callers see the
 * full fixed-size field: a receiver always gets this many bytes, zero padded). */
#define CM_REQ_PDATA    56
#define CM_REP_PDATA    196
#define CM_REJ_PDATA    148
#define CM_REJ_CONSUMER 28 /* IB_CM_REJ_CONSUMER_DEFINED */
#define CM_MAGIC        0x4643u

static void cm_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void cm_log(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "fakeverbs-cm[%d]: %s\n", (int)getpid(), buf);
}

#define cm_dbg(...)                                                                                \
    do {                                                                                           \
        if (fv_debug_enabled()) {                                                                  \
            cm_log(__VA_ARGS__);                                                                   \
        }                                                                                          \
    } while (0)

static void cm_unsupported(const char *what)
{
    cm_log("%s is not implemented by the fake provider (tests/fakeverbs)", what);
    errno = ENOSYS;
}

enum msg_type { M_REQ = 1, M_REP, M_REJ, M_RTU };

struct cm_msg {
    uint16_t magic;
    uint8_t type;
    uint8_t pdlen;
    uint8_t resp_res, init_depth, retry, rnr_retry;
    uint32_t qpn;
    struct sockaddr_storage src, dst;
    uint8_t pdata[CM_REP_PDATA];
};

struct cm_chan {
    struct rdma_event_channel ch;
    int wfd;
    pthread_mutex_t lock;
    struct cm_ev *head, *tail;
    int nids;
};

enum id_state {
    S_IDLE,
    S_BOUND,
    S_LISTEN,
    S_ADDR,
    S_ROUTE,
    S_CONNECTING, /* active: REQ sent */
    S_REP_RCVD,   /* active, external QP: CONNECT_RESPONSE reported, rdma_establish next */
    S_REQ_RCVD,   /* passive: CONNECT_REQUEST reported */
    S_ACCEPTING,  /* passive: REP sent */
    S_CONNECTED,
    S_DONE, /* rejected, unreachable, disconnected */
};

struct cm_id {
    struct rdma_cm_id id;
    enum id_state state;
    uint16_t port;  /* bound port, host order */
    int lfd;        /* the listening (or port-reserving) socket */
    uint64_t sock;  /* serial of the connection socket while the cm thread owns it */
    int events_out; /* events returned and not yet acknowledged (channel lock) */
    bool disc_done; /* DISCONNECTED reported (channel lock) */
    bool attached;  /* the QP carries the connection */
    uint8_t tos;
    uint8_t ack_timeout;
    bool ack_timeout_set;
    uint32_t peer_qpn;
    uint8_t peer_retry;
    uint8_t my_retry, my_rnr_retry;
    /* The program's own QP ("external": qp_num in rdma_connect/rdma_accept, id.qp NULL). */
    bool ext;
    uint32_t ext_qpn;
    /* The CM's view of the connection, what rdma_init_qp_attr reports: known once a request
     * was sent or received; this side's responder resources and initiator depth. */
    bool conn_known;
    bool peer_known; /* the peer's QP number: RTR and RTS attributes exist */
    bool passive;
    uint8_t resp_res, init_depth;
    uint8_t sgid_index; /* the route's source GID (RoCE: the RoCE v2 GID of its address) */
    struct ibv_sa_path_rec path;
};

struct cm_ev {
    struct rdma_cm_event ev;
    struct cm_id *target;
    uint8_t pdata[CM_REP_PDATA];
    struct cm_ev *next;
};

enum sock_kind { K_LISTEN, K_PEND, K_CONN };

struct cm_sock {
    uint64_t serial;
    enum sock_kind kind;
    int fd;
    struct cm_id *id; /* K_LISTEN, K_PEND: the listener; K_CONN: the connection's id */
    struct cm_msg msg;
    size_t got;
    struct cm_sock *next;
};

static pthread_mutex_t g_cm     = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_cm_once = PTHREAD_ONCE_INIT;
static int g_cm_err;
static int g_epfd    = -1;
static int g_wake[2] = {-1, -1};
static pthread_t g_thread;
static bool g_thread_started;
static bool g_cm_stop;
static struct cm_sock *g_socks;
static uint64_t g_serial;
static struct ibv_context **g_ctxs;
static struct ibv_pd **g_pds;
static int g_nctx;
static unsigned g_seed;

static void *cm_main(void *arg);

static void cm_init_once(void)
{
    struct ibv_device **list;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    int n                 = 0;
    g_seed                = (unsigned)getpid() ^ (unsigned)time(NULL);
    list                  = ibv_get_device_list(&n);
    if (list == NULL) {
        g_cm_err = errno ? errno : ENODEV;
        return;
    }
    g_ctxs = calloc((size_t)n + 1, sizeof(*g_ctxs));
    g_pds  = calloc((size_t)n + 1, sizeof(*g_pds));
    if (g_ctxs == NULL || g_pds == NULL) {
        g_cm_err = ENOMEM;
        ibv_free_device_list(list);
        return;
    }
    for (int i = 0; i < n; i++) {
        g_ctxs[i] = ibv_open_device(list[i]);
        if (g_ctxs[i] == NULL) {
            g_cm_err = errno;
            ibv_free_device_list(list);
            return;
        }
        g_nctx++;
    }
    ibv_free_device_list(list);
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g_epfd < 0 || pipe2(g_wake, O_CLOEXEC | O_NONBLOCK) != 0 ||
        epoll_ctl(g_epfd, EPOLL_CTL_ADD, g_wake[0], &ev) != 0) {
        g_cm_err = errno;
        return;
    }
    g_cm_err         = pthread_create(&g_thread, NULL, cm_main, NULL);
    g_thread_started = g_cm_err == 0;
}

static int cm_init(void)
{
    pthread_once(&g_cm_once, cm_init_once);
    if (g_cm_err != 0) {
        errno = g_cm_err;
        return -1;
    }
    return 0;
}

/* Closes what the library opened, when the program left nothing behind (valgrind-clean). */
__attribute__((destructor)) static void cm_fini(void)
{
    if (g_thread_started) {
        pthread_mutex_lock(&g_cm);
        g_cm_stop = true;
        pthread_mutex_unlock(&g_cm);
        if (write(g_wake[1], "s", 1) != 1) {
            cm_log("cannot stop the connection thread: %s", strerror(errno));
            return;
        }
        pthread_join(g_thread, NULL);
        g_thread_started = false;
    }
    if (g_epfd < 0 || g_socks != NULL) {
        return;
    }
    close(g_epfd);
    close(g_wake[0]);
    close(g_wake[1]);
    g_epfd = -1;
    for (int i = 0; i < g_nctx; i++) {
        if (g_pds[i] != NULL && ibv_dealloc_pd(g_pds[i]) != 0) {
            return;
        }
        g_pds[i] = NULL;
    }
    for (int i = 0; i < g_nctx; i++) {
        if (ibv_close_device(g_ctxs[i]) != 0) {
            return;
        }
    }
    g_nctx = 0;
    free(g_ctxs);
    free(g_pds);
    g_ctxs = NULL;
    g_pds  = NULL;
}

/* The device the loopback addresses belong to: the first whose port is active. */
static struct ibv_context *loopback_ctx(void)
{
    for (int i = 0; i < g_nctx; i++) {
        struct ibv_port_attr pa;
        if (ibv_query_port(g_ctxs[i], 1, &pa) == 0 && pa.state == IBV_PORT_ACTIVE) {
            return g_ctxs[i];
        }
    }
    return NULL;
}

static bool addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        return (ntohl(s->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        const uint8_t *b             = s->sin6_addr.s6_addr;
        return IN6_IS_ADDR_LOOPBACK(&s->sin6_addr) ||
               (IN6_IS_ADDR_V4MAPPED(&s->sin6_addr) && b[12] == 127);
    }
    return false;
}

static bool addr_is_any(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    if (sa->sa_family == AF_INET6) {
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    }
    return false;
}

static size_t addr_len(const struct sockaddr *sa)
{
    return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static uint16_t addr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET6) {
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    }
    return ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

static void addr_set_port(struct sockaddr *sa, uint16_t port)
{
    if (sa->sa_family == AF_INET6) {
        ((struct sockaddr_in6 *)sa)->sin6_port = htons(port);
    } else {
        ((struct sockaddr_in *)sa)->sin_port = htons(port);
    }
}

static socklen_t port_name(struct sockaddr_un *un, uint16_t port)
{
    int n;
    memset(un, 0, sizeof(*un));
    un->sun_family = AF_UNIX;
    n              = snprintf(un->sun_path + 1, sizeof(un->sun_path) - 1, "fakeverbs-cm-%u", port);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* The number of the QP that carries the id's connection: its own or the program's. */
static uint32_t qpn_of(const struct cm_id *id)
{
    return id->id.qp != NULL ? id->id.qp->qp_num : id->ext_qpn;
}

/* The route's source GID, as the kernel resolves it from the id's source address: RoCE: the
 * RoCE v2 GID of that IPv4 address, else the first RoCE v2 GID (IPv6 loopback has none), else
 * GID 0; InfiniBand: GID 0. */
static uint8_t route_gid(struct ibv_context *ctx, const struct sockaddr *src, union ibv_gid *gid)
{
    struct ibv_port_attr pa;
    int first_v2 = -1;
    if (ibv_query_port(ctx, 1, &pa) == 0 && pa.link_layer == IBV_LINK_LAYER_ETHERNET) {
        for (int i = 0; i < pa.gid_tbl_len && i < 256; i++) {
            struct ibv_gid_entry e;
            if (ibv_query_gid_ex(ctx, 1, (uint32_t)i, &e, 0) != 0 ||
                e.gid_type != IBV_GID_TYPE_ROCE_V2) {
                continue;
            }
            if (first_v2 < 0) {
                first_v2 = i;
            }
            if (src->sa_family == AF_INET && IN6_IS_ADDR_V4MAPPED((struct in6_addr *)e.gid.raw) &&
                memcmp(e.gid.raw + 12, &((const struct sockaddr_in *)src)->sin_addr, 4) == 0) {
                *gid = e.gid;
                return (uint8_t)i;
            }
        }
    }
    first_v2 = first_v2 < 0 ? 0 : first_v2;
    if (ibv_query_gid(ctx, 1, first_v2, gid) != 0) {
        memset(gid, 0, sizeof(*gid));
    }
    return (uint8_t)first_v2;
}

/* Sets the id's path record (loopback: the destination GID is the source GID). */
static void route_set(struct cm_id *id)
{
    memset(&id->path, 0, sizeof(id->path));
    id->sgid_index         = route_gid(id->id.verbs, &id->id.route.addr.src_addr, &id->path.sgid);
    id->path.dgid          = id->path.sgid;
    id->path.pkey          = htobe16(0xffff);
    id->path.mtu           = IBV_MTU_4096;
    id->path.traffic_class = id->tos;
    id->path.hop_limit     = 1;
    id->path.numb_path     = 1;
    id->id.route.path_rec  = &id->path;
    id->id.route.num_paths = 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Event channels */

FV_EXPORT struct rdma_event_channel *rdma_create_event_channel(void)
{
    struct cm_chan *ch;
    int p[2];
    if (cm_init() != 0) {
        return NULL;
    }
    ch = calloc(1, sizeof(*ch));
    if (ch == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (pipe2(p, O_CLOEXEC) != 0) {
        free(ch);
        return NULL;
    }
    ch->ch.fd = p[0];
    ch->wfd   = p[1];
    pthread_mutex_init(&ch->lock, NULL);
    return &ch->ch;
}

FV_EXPORT void rdma_destroy_event_channel(struct rdma_event_channel *channel)
{
    struct cm_chan *ch = (struct cm_chan *)channel;
    if (ch->nids != 0) {
        /* the real library would leave the ids dangling; say so instead */
        cm_log("rdma_destroy_event_channel: %d id(s) still use the channel; not destroyed",
               ch->nids);
        return;
    }
    while (ch->head != NULL) {
        struct cm_ev *e = ch->head;
        ch->head        = e->next;
        free(e);
    }
    close(ch->ch.fd);
    close(ch->wfd);
    pthread_mutex_destroy(&ch->lock);
    free(ch);
}

/* Queues an event for id; pdata/pdlen are copied. Takes the channel's lock. */
static void post_event(struct cm_id *id, struct cm_id *listen, enum rdma_cm_event_type type,
                       int status, const void *pdata, uint8_t pdlen,
                       const struct rdma_conn_param *param)
{
    struct cm_chan *ch = (struct cm_chan *)id->id.channel;
    struct cm_ev *e    = calloc(1, sizeof(*e));
    if (e == NULL) {
        cm_log("event %s lost: out of memory", rdma_event_str(type));
        return;
    }
    e->ev.id        = &id->id;
    e->ev.listen_id = listen ? &listen->id : NULL;
    e->ev.event     = type;
    e->ev.status    = status;
    e->target       = id;
    if (param != NULL) {
        e->ev.param.conn = *param;
    }
    if (pdlen != 0) {
        memcpy(e->pdata, pdata, pdlen);
        e->ev.param.conn.private_data     = e->pdata;
        e->ev.param.conn.private_data_len = pdlen;
    }
    cm_dbg("event %s for id %p (status %d)", rdma_event_str(type), (void *)id, status);
    pthread_mutex_lock(&ch->lock);
    if (ch->tail == NULL) {
        ch->head = e;
        if (write(ch->wfd, "e", 1) != 1) {
            cm_log("event channel write failed: %s", strerror(errno));
        }
    } else {
        ch->tail->next = e;
    }
    ch->tail = e;
    pthread_mutex_unlock(&ch->lock);
}

FV_EXPORT int rdma_get_cm_event(struct rdma_event_channel *channel, struct rdma_cm_event **event)
{
    struct cm_chan *ch = (struct cm_chan *)channel;
    for (;;) {
        int fl = fcntl(ch->ch.fd, F_GETFL);
        struct cm_ev *e;
        if ((fl & O_NONBLOCK) == 0) {
            struct pollfd pfd = {.fd = ch->ch.fd, .events = POLLIN};
            if (poll(&pfd, 1, -1) < 0) {
                return -1;
            }
        }
        pthread_mutex_lock(&ch->lock);
        e = ch->head;
        if (e == NULL) {
            pthread_mutex_unlock(&ch->lock);
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
                cm_log("event channel read failed: %s", strerror(errno));
            }
        }
        e->target->events_out++;
        pthread_mutex_unlock(&ch->lock);
        *event = &e->ev;
        return 0;
    }
}

FV_EXPORT int rdma_ack_cm_event(struct rdma_cm_event *event)
{
    struct cm_ev *e    = (struct cm_ev *)event;
    struct cm_chan *ch = (struct cm_chan *)e->target->id.channel;
    pthread_mutex_lock(&ch->lock);
    e->target->events_out--;
    pthread_mutex_unlock(&ch->lock);
    free(e);
    return 0;
}

FV_EXPORT const char *rdma_event_str(enum rdma_cm_event_type event)
{
    static const char *const s[] = {
        "RDMA_CM_EVENT_ADDR_RESOLVED",   "RDMA_CM_EVENT_ADDR_ERROR",
        "RDMA_CM_EVENT_ROUTE_RESOLVED",  "RDMA_CM_EVENT_ROUTE_ERROR",
        "RDMA_CM_EVENT_CONNECT_REQUEST", "RDMA_CM_EVENT_CONNECT_RESPONSE",
        "RDMA_CM_EVENT_CONNECT_ERROR",   "RDMA_CM_EVENT_UNREACHABLE",
        "RDMA_CM_EVENT_REJECTED",        "RDMA_CM_EVENT_ESTABLISHED",
        "RDMA_CM_EVENT_DISCONNECTED",    "RDMA_CM_EVENT_DEVICE_REMOVAL",
        "RDMA_CM_EVENT_MULTICAST_JOIN",  "RDMA_CM_EVENT_MULTICAST_ERROR",
        "RDMA_CM_EVENT_ADDR_CHANGE",     "RDMA_CM_EVENT_TIMEWAIT_EXIT"};
    return (unsigned)event < sizeof(s) / sizeof(s[0]) ? s[event] : "UNKNOWN EVENT";
}

/* ---------------------------------------------------------------------------------------- */
/* Ids */

FV_EXPORT int rdma_create_id(struct rdma_event_channel *channel, struct rdma_cm_id **out,
                             void *context, enum rdma_port_space ps)
{
    struct cm_id *id;
    if (cm_init() != 0) {
        return -1;
    }
    if (channel == NULL) {
        cm_unsupported("rdma_create_id without an event channel (synchronous mode)");
        return -1;
    }
    if (ps != RDMA_PS_TCP && ps != RDMA_PS_IB) {
        cm_log("rdma_create_id: port space 0x%x not supported (RDMA_PS_TCP, RDMA_PS_IB)", ps);
        errno = EINVAL;
        return -1;
    }
    id = calloc(1, sizeof(*id));
    if (id == NULL) {
        errno = ENOMEM;
        return -1;
    }
    id->id.channel   = channel;
    id->id.context   = context;
    id->id.ps        = ps;
    id->id.qp_type   = IBV_QPT_RC;
    id->lfd          = -1;
    id->my_retry     = 7;
    id->my_rnr_retry = 7;
    pthread_mutex_lock(&g_cm);
    ((struct cm_chan *)channel)->nids++;
    pthread_mutex_unlock(&g_cm);
    *out = &id->id;
    return 0;
}

static struct cm_sock *sock_find(uint64_t serial)
{
    for (struct cm_sock *s = g_socks; s != NULL; s = s->next) {
        if (s->serial == serial) {
            return s;
        }
    }
    return NULL;
}

static struct cm_sock *sock_add(int fd, enum sock_kind kind, struct cm_id *id)
{
    struct cm_sock *s     = calloc(1, sizeof(*s));
    struct epoll_event ev = {.events = EPOLLIN};
    if (s == NULL) {
        return NULL;
    }
    s->serial   = ++g_serial;
    s->fd       = fd;
    s->kind     = kind;
    s->id       = id;
    ev.data.u64 = s->serial;
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        free(s);
        return NULL;
    }
    s->next = g_socks;
    g_socks = s;
    return s;
}

/* Removes the socket from the cm thread; closes it unless keep. */
static void sock_del(struct cm_sock *s, bool keep)
{
    struct cm_sock **pp;
    epoll_ctl(g_epfd, EPOLL_CTL_DEL, s->fd, NULL);
    if (!keep) {
        close(s->fd);
    }
    for (pp = &g_socks; *pp != s; pp = &(*pp)->next) {
    }
    *pp = s->next;
    free(s);
}

FV_EXPORT int rdma_destroy_id(struct rdma_cm_id *cid)
{
    struct cm_id *id   = (struct cm_id *)cid;
    struct cm_chan *ch = (struct cm_chan *)cid->channel;
    /* the real call blocks until the id's events are acknowledged; wait, but not forever */
    for (int i = 0;; i++) {
        int out;
        pthread_mutex_lock(&ch->lock);
        out = id->events_out;
        pthread_mutex_unlock(&ch->lock);
        if (out == 0) {
            break;
        }
        if (i == 500) {
            cm_log("rdma_destroy_id: %d event(s) of this id not acknowledged with "
                   "rdma_ack_cm_event after 5 s; not destroyed",
                   out);
            errno = EBUSY;
            return -1;
        }
        usleep(10000);
    }
    pthread_mutex_lock(&g_cm);
    /* its listening socket, the sockets accepted on it that have not sent their request yet,
     * and its connection socket while being set up */
    for (struct cm_sock *s = g_socks, *next; s != NULL; s = next) {
        next = s->next;
        if (s->id == id) {
            sock_del(s, false);
        }
    }
    if (id->lfd >= 0) {
        close(id->lfd);
    }
    if (id->attached) {
        fv_qp_clear_hook(cid->verbs, qpn_of(id), id);
    }
    ch->nids--;
    pthread_mutex_unlock(&g_cm);
    pthread_mutex_lock(&ch->lock);
    {
        struct cm_ev **pp = &ch->head, *prev = NULL;
        while (*pp != NULL) {
            struct cm_ev *e = *pp;
            if (e->target == id) {
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
    }
    pthread_mutex_unlock(&ch->lock);
    free(id);
    return 0;
}

/* Reserves port (0: a free one) for id with an abstract socket named after it. */
static int reserve_port(struct cm_id *id, uint16_t port)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return -1;
    }
    for (int tries = 0; tries < 2000; tries++) {
        struct sockaddr_un un;
        uint16_t p    = port ? port : (uint16_t)(20000 + rand_r(&g_seed) % 40000);
        socklen_t len = port_name(&un, p);
        if (bind(fd, (struct sockaddr *)&un, len) == 0) {
            id->lfd  = fd;
            id->port = p;
            return 0;
        }
        if (errno != EADDRINUSE || port != 0) {
            break;
        }
    }
    close(fd);
    return -1;
}

FV_EXPORT int rdma_bind_addr(struct rdma_cm_id *cid, struct sockaddr *addr)
{
    struct cm_id *id = (struct cm_id *)cid;
    int ret          = 0;
    if (addr == NULL || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)) {
        cm_log("rdma_bind_addr: only AF_INET and AF_INET6 addresses");
        errno = EAFNOSUPPORT;
        return -1;
    }
    if (!addr_is_any(addr) && !addr_is_loopback(addr)) {
        cm_log("rdma_bind_addr: the fake provider only has loopback addresses");
        errno = EADDRNOTAVAIL;
        return -1;
    }
    pthread_mutex_lock(&g_cm);
    if (id->state != S_IDLE) {
        errno = EINVAL;
        ret   = -1;
        goto out;
    }
    if (reserve_port(id, addr_port(addr)) != 0) {
        ret = -1;
        goto out;
    }
    memcpy(&cid->route.addr.src_storage, addr, addr_len(addr));
    addr_set_port(&cid->route.addr.src_addr, id->port);
    if (!addr_is_any(addr)) {
        cid->verbs    = loopback_ctx();
        cid->port_num = 1;
    }
    id->state = S_BOUND;
    cm_dbg("id %p bound to port %u", (void *)id, id->port);
out:
    pthread_mutex_unlock(&g_cm);
    return ret;
}

FV_EXPORT int rdma_listen(struct rdma_cm_id *cid, int backlog)
{
    struct cm_id *id = (struct cm_id *)cid;
    int ret          = 0;
    pthread_mutex_lock(&g_cm);
    if (id->state != S_BOUND) {
        cm_log("rdma_listen: the id is not bound (rdma_bind_addr first)");
        errno = EINVAL;
        ret   = -1;
        goto out;
    }
    if (listen(id->lfd, backlog > 0 ? backlog : 128) != 0) {
        ret = -1;
        goto out;
    }
    if (sock_add(id->lfd, K_LISTEN, id) == NULL) {
        ret = -1;
        goto out;
    }
    id->lfd   = -1; /* the listening socket's entry owns it now */
    id->state = S_LISTEN;
out:
    pthread_mutex_unlock(&g_cm);
    return ret;
}

FV_EXPORT int rdma_resolve_addr(struct rdma_cm_id *cid, struct sockaddr *src, struct sockaddr *dst,
                                int timeout_ms)
{
    struct cm_id *id = (struct cm_id *)cid;
    struct ibv_context *ctx;
    if (dst == NULL || (dst->sa_family != AF_INET && dst->sa_family != AF_INET6)) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    pthread_mutex_lock(&g_cm);
    if (id->state != S_IDLE && id->state != S_BOUND) {
        pthread_mutex_unlock(&g_cm);
        errno = EINVAL;
        return -1;
    }
    memcpy(&cid->route.addr.dst_storage, dst, addr_len(dst));
    if (id->state == S_IDLE) {
        if (src != NULL && src->sa_family == dst->sa_family) {
            memcpy(&cid->route.addr.src_storage, src, addr_len(src));
        } else if (dst->sa_family == AF_INET) {
            cid->route.addr.src_sin.sin_family      = AF_INET;
            cid->route.addr.src_sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        } else {
            cid->route.addr.src_sin6.sin6_family = AF_INET6;
            cid->route.addr.src_sin6.sin6_addr   = in6addr_loopback;
        }
        addr_set_port(&cid->route.addr.src_addr, (uint16_t)(32768 + rand_r(&g_seed) % 28000));
    }
    ctx       = loopback_ctx();
    id->state = S_ADDR;
    pthread_mutex_unlock(&g_cm);
    if (!addr_is_loopback(dst)) {
        cm_dbg("rdma_resolve_addr: %s destination is not a loopback address",
               dst->sa_family == AF_INET ? "IPv4" : "IPv6");
        post_event(id, NULL, RDMA_CM_EVENT_ADDR_ERROR, -EHOSTUNREACH, NULL, 0, NULL);
        return 0;
    }
    if (ctx == NULL) {
        cm_dbg("rdma_resolve_addr: no device with an active port");
        post_event(id, NULL, RDMA_CM_EVENT_ADDR_ERROR, -ENODEV, NULL, 0, NULL);
        return 0;
    }
    cid->verbs    = ctx;
    cid->port_num = 1;
    post_event(id, NULL, RDMA_CM_EVENT_ADDR_RESOLVED, 0, NULL, 0, NULL);
    return 0;
}

FV_EXPORT int rdma_resolve_route(struct rdma_cm_id *cid, int timeout_ms)
{
    struct cm_id *id = (struct cm_id *)cid;
    pthread_mutex_lock(&g_cm);
    if (id->state != S_ADDR || cid->verbs == NULL) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_resolve_route: the address is not resolved");
        errno = EINVAL;
        return -1;
    }
    route_set(id);
    id->state = S_ROUTE;
    pthread_mutex_unlock(&g_cm);
    post_event(id, NULL, RDMA_CM_EVENT_ROUTE_RESOLVED, 0, NULL, 0, NULL);
    return 0;
}

FV_EXPORT int rdma_set_option(struct rdma_cm_id *cid, int level, int optname, void *optval,
                              size_t optlen)
{
    struct cm_id *id = (struct cm_id *)cid;
    if (level != RDMA_OPTION_ID) {
        cm_unsupported("rdma_set_option at level RDMA_OPTION_IB");
        return -1;
    }
    switch (optname) {
    case RDMA_OPTION_ID_TOS:
        if (optlen != sizeof(uint8_t)) {
            errno = EINVAL;
            return -1;
        }
        id->tos = *(uint8_t *)optval;
        cm_dbg("id %p: type of service %u", (void *)id, id->tos);
        return 0;
    case RDMA_OPTION_ID_REUSEADDR:
    case RDMA_OPTION_ID_AFONLY:
        if (optlen != sizeof(int)) {
            errno = EINVAL;
            return -1;
        }
        return 0; /* every fake port is reusable at once, and IPv4 and IPv6 share the ports */
    case RDMA_OPTION_ID_ACK_TIMEOUT:
        if (optlen != sizeof(uint8_t) || *(uint8_t *)optval > 31) {
            errno = EINVAL;
            return -1;
        }
        id->ack_timeout     = *(uint8_t *)optval;
        id->ack_timeout_set = true;
        return 0;
    default:
        errno = ENOSYS;
        cm_log("rdma_set_option: option %d not supported", optname);
        return -1;
    }
}

FV_EXPORT __be16 rdma_get_src_port(struct rdma_cm_id *cid)
{
    return htons(addr_port(&cid->route.addr.src_addr));
}

FV_EXPORT __be16 rdma_get_dst_port(struct rdma_cm_id *cid)
{
    return htons(addr_port(&cid->route.addr.dst_addr));
}

FV_EXPORT struct ibv_context **rdma_get_devices(int *num_devices)
{
    struct ibv_context **list;
    if (cm_init() != 0) {
        return NULL;
    }
    list = calloc((size_t)g_nctx + 1, sizeof(*list));
    if (list == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    memcpy(list, g_ctxs, sizeof(*list) * (size_t)g_nctx);
    if (num_devices != NULL) {
        *num_devices = g_nctx;
    }
    return list;
}

FV_EXPORT void rdma_free_devices(struct ibv_context **list)
{
    free(list);
}

/* ---------------------------------------------------------------------------------------- */
/* QPs */

static int init_attr(struct cm_id *id, struct ibv_qp_attr *a, int *mask);

static struct ibv_pd *default_pd(struct ibv_context *ctx)
{
    for (int i = 0; i < g_nctx; i++) {
        if (g_ctxs[i] == ctx) {
            if (g_pds[i] == NULL) {
                g_pds[i] = ibv_alloc_pd(ctx);
            }
            return g_pds[i];
        }
    }
    return NULL;
}

FV_EXPORT int rdma_create_qp(struct rdma_cm_id *cid, struct ibv_pd *pd,
                             struct ibv_qp_init_attr *attr)
{
    struct ibv_qp_attr qa = {0};
    struct ibv_qp *qp;
    int ret, mask;
    if (cid->verbs == NULL) {
        cm_log("rdma_create_qp: the id has no device yet (bind or resolve an address first)");
        errno = EINVAL;
        return -1;
    }
    if (cid->qp != NULL) {
        errno = EINVAL;
        return -1;
    }
    if (pd == NULL) {
        pthread_mutex_lock(&g_cm);
        pd = default_pd(cid->verbs);
        pthread_mutex_unlock(&g_cm);
        if (pd == NULL) {
            return -1;
        }
    } else if (pd->context != cid->verbs) {
        cm_log("rdma_create_qp: the PD belongs to another device context than id->verbs");
        errno = EINVAL;
        return -1;
    }
    if (attr->send_cq == NULL || attr->recv_cq == NULL) {
        cm_unsupported("rdma_create_qp without send_cq and recv_cq");
        return -1;
    }
    qp = ibv_create_qp(pd, attr);
    if (qp == NULL) {
        return -1;
    }
    qa.qp_state = IBV_QPS_INIT;
    pthread_mutex_lock(&g_cm);
    ret = init_attr((struct cm_id *)cid, &qa, &mask);
    pthread_mutex_unlock(&g_cm);
    if (ret == 0) {
        ret = ibv_modify_qp(qp, &qa, mask);
    }
    if (ret != 0) {
        ibv_destroy_qp(qp);
        errno = ret;
        return -1;
    }
    cid->qp              = qp;
    cid->pd              = pd;
    cid->send_cq         = attr->send_cq;
    cid->recv_cq         = attr->recv_cq;
    cid->send_cq_channel = attr->send_cq->channel;
    cid->recv_cq_channel = attr->recv_cq->channel;
    return 0;
}

FV_EXPORT void rdma_destroy_qp(struct rdma_cm_id *cid)
{
    struct cm_id *id = (struct cm_id *)cid;
    int ret;
    if (cid->qp == NULL) {
        return;
    }
    fv_qp_clear_hook(cid->verbs, cid->qp->qp_num, id);
    id->attached = false;
    ret          = ibv_destroy_qp(cid->qp);
    if (ret != 0) {
        cm_log("rdma_destroy_qp: ibv_destroy_qp failed: %s", strerror(ret));
        return;
    }
    cid->qp = NULL;
}

/*
 * What rdma_init_qp_attr reports for the state asked in a->qp_state (g_cm held), as the kernel's
 * CM does: INIT before a connection is under way grants no remote access (librdmacm moves the
 * QP INIT -> INIT again before RTR for that reason); RTR and RTS exist once the peer's QP is
 * known (the request received, or the reply). Returns 0 or an errno value.
 */
static int init_attr(struct cm_id *id, struct ibv_qp_attr *a, int *mask)
{
    enum ibv_qp_state want = a->qp_state;
    struct ibv_port_attr pa;
    if (id->id.verbs == NULL) {
        cm_log("rdma_init_qp_attr: the id has no device yet (bind or resolve an address first)");
        return EINVAL;
    }
    memset(a, 0, sizeof(*a));
    a->qp_state = want;
    if (want == IBV_QPS_INIT) {
        a->port_num = id->id.port_num != 0 ? id->id.port_num : 1;
        if (id->conn_known) {
            a->qp_access_flags =
                IBV_ACCESS_REMOTE_WRITE | (id->resp_res != 0 ? IBV_ACCESS_REMOTE_READ : 0);
        }
        *mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
        return 0;
    }
    if (want != IBV_QPS_RTR && want != IBV_QPS_RTS) {
        cm_log("rdma_init_qp_attr: QP state %d: the fake reports INIT, RTR and RTS only", want);
        return EINVAL;
    }
    if (!id->peer_known) {
        cm_log("rdma_init_qp_attr: no %s attributes before the peer's QP is known (a connect "
               "request or response)",
               want == IBV_QPS_RTR ? "RTR" : "RTS");
        return EINVAL;
    }
    if (want == IBV_QPS_RTS) {
        uint8_t retry    = id->passive ? id->peer_retry : id->my_retry;
        a->max_rd_atomic = id->init_depth;
        a->timeout       = id->ack_timeout_set ? id->ack_timeout : 14;
        a->retry_cnt     = retry > 7 ? 7 : retry;
        a->rnr_retry     = id->my_rnr_retry > 7 ? 7 : id->my_rnr_retry;
        *mask = IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC | IBV_QP_RETRY_CNT |
                IBV_QP_RNR_RETRY | IBV_QP_TIMEOUT;
        return 0;
    }
    a->path_mtu           = id->path.mtu != 0 ? (enum ibv_mtu)id->path.mtu : IBV_MTU_4096;
    a->dest_qp_num        = id->peer_qpn;
    a->max_dest_rd_atomic = id->resp_res;
    a->min_rnr_timer      = 12; /* 0.64 ms */
    a->ah_attr.port_num   = 1;
    a->ah_attr.sl         = id->path.sl;
    if (ibv_query_port(id->id.verbs, 1, &pa) == 0 && pa.link_layer == IBV_LINK_LAYER_INFINIBAND) {
        a->ah_attr.dlid = pa.lid; /* loopback: our own port */
    } else {
        a->ah_attr.is_global         = 1;
        a->ah_attr.grh.dgid          = id->path.dgid;
        a->ah_attr.grh.sgid_index    = id->sgid_index;
        a->ah_attr.grh.hop_limit     = id->path.hop_limit;
        a->ah_attr.grh.traffic_class = id->tos;
    }
    *mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
            IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
    return 0;
}

/* Moves the id's own QP INIT -> INIT (the access the connection grants), RTR and RTS with the
 * CM's attributes, as librdmacm does when the connection is made (g_cm held). */
static int qp_connect(struct cm_id *id)
{
    static const enum ibv_qp_state steps[] = {IBV_QPS_INIT, IBV_QPS_RTR, IBV_QPS_RTS};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        struct ibv_qp_attr a = {.qp_state = steps[i]};
        int mask;
        int ret = init_attr(id, &a, &mask);
        if (ret == 0) {
            ret = ibv_modify_qp(id->id.qp, &a, mask);
        }
        if (ret != 0) {
            return ret;
        }
    }
    return 0;
}

static void qp_to_err(struct rdma_cm_id *cid)
{
    if (cid->qp != NULL) {
        struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
        ibv_modify_qp(cid->qp, &a, IBV_QP_STATE);
    }
}

/* The NIC's calls, with the device lock held: only queue events. */
static void conn_hook(void *arg, enum fv_cm_why why)
{
    struct cm_id *id   = arg;
    struct cm_chan *ch = (struct cm_chan *)id->id.channel;
    bool report;
    pthread_mutex_lock(&ch->lock);
    report        = !id->disc_done;
    id->disc_done = true;
    pthread_mutex_unlock(&ch->lock);
    if (report) {
        cm_dbg("id %p: %s", (void *)id,
               why == FV_CM_DREQ   ? "disconnect request"
               : why == FV_CM_DREP ? "disconnect reply"
                                   : "peer closed");
        post_event(id, NULL, RDMA_CM_EVENT_DISCONNECTED, 0, NULL, 0, NULL);
        post_event(id, NULL, RDMA_CM_EVENT_TIMEWAIT_EXIT, 0, NULL, 0, NULL);
    }
}

static int send_msg(int fd, const struct cm_msg *m)
{
    size_t off = 0;
    while (off < sizeof(*m)) {
        ssize_t n = send(fd, (const uint8_t *)m + off, sizeof(*m) - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                if (poll(&p, 1, 5000) <= 0) {
                    return ETIMEDOUT;
                }
                continue;
            }
            return errno;
        }
        off += (size_t)n;
    }
    return 0;
}

FV_EXPORT int rdma_connect(struct rdma_cm_id *cid, struct rdma_conn_param *param)
{
    struct cm_id *id = (struct cm_id *)cid;
    struct cm_msg m  = {.magic = CM_MAGIC, .type = M_REQ};
    struct sockaddr_un un;
    socklen_t len;
    int fd, ret;
    pthread_mutex_lock(&g_cm);
    if (id->state != S_ROUTE) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_connect: the route is not resolved");
        errno = EINVAL;
        return -1;
    }
    if (cid->qp == NULL && (param == NULL || param->qp_num == 0)) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_connect: the id has no QP: create one (rdma_create_qp) or pass the "
               "number of your own in qp_num");
        errno = EINVAL;
        return -1;
    }
    if (cid->qp == NULL && fv_qp_state(cid->verbs, param->qp_num) < 0) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_connect: qp_num 0x%x is no QP of %s", param->qp_num,
               ibv_get_device_name(cid->verbs->device));
        errno = EINVAL;
        return -1;
    }
    if (param != NULL && param->private_data_len > CM_REQ_PDATA) {
        pthread_mutex_unlock(&g_cm);
        cm_dbg("rdma_connect: %u bytes of private data, at most %d", param->private_data_len,
               CM_REQ_PDATA);
        errno = EINVAL;
        return -1;
    }
    if (param != NULL) {
        id->my_retry     = param->retry_count;
        id->my_rnr_retry = param->rnr_retry_count;
        m.resp_res       = param->responder_resources;
        m.init_depth     = param->initiator_depth;
        m.retry          = param->retry_count;
        m.rnr_retry      = param->rnr_retry_count;
        m.pdlen          = param->private_data_len;
        if (param->private_data_len != 0) {
            memcpy(m.pdata, param->private_data, param->private_data_len);
        }
    } else {
        m.retry     = 7;
        m.rnr_retry = 7;
    }
    if (cid->qp == NULL) {
        id->ext     = true;
        id->ext_qpn = param->qp_num;
    }
    id->conn_known = true;
    id->resp_res   = m.resp_res;
    id->init_depth = m.init_depth;
    m.qpn          = qpn_of(id);
    memcpy(&m.src, &cid->route.addr.src_storage, sizeof(m.src));
    memcpy(&m.dst, &cid->route.addr.dst_storage, sizeof(m.dst));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        pthread_mutex_unlock(&g_cm);
        return -1;
    }
    len       = port_name(&un, addr_port(&cid->route.addr.dst_addr));
    id->state = S_CONNECTING;
    if (connect(fd, (struct sockaddr *)&un, len) != 0) {
        int err = errno;
        close(fd);
        pthread_mutex_unlock(&g_cm);
        cm_dbg("rdma_connect: nothing listens on port %u (%s)",
               addr_port(&cid->route.addr.dst_addr), strerror(err));
        id->state = S_DONE;
        post_event(id, NULL, RDMA_CM_EVENT_UNREACHABLE, -ECONNREFUSED, NULL, 0, NULL);
        return 0;
    }
    ret = send_msg(fd, &m);
    if (ret == 0 && fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
        ret = errno;
    }
    if (ret == 0) {
        struct cm_sock *s = sock_add(fd, K_CONN, id);
        if (s == NULL) {
            ret = errno ? errno : ENOMEM;
        } else {
            id->sock = s->serial;
        }
    }
    if (ret != 0) {
        close(fd);
        id->state = S_ROUTE;
        pthread_mutex_unlock(&g_cm);
        errno = ret;
        return -1;
    }
    pthread_mutex_unlock(&g_cm);
    return 0;
}

FV_EXPORT int rdma_accept(struct rdma_cm_id *cid, struct rdma_conn_param *param)
{
    struct cm_id *id = (struct cm_id *)cid;
    struct cm_msg m  = {.magic = CM_MAGIC, .type = M_REP};
    struct cm_sock *s;
    int ret;
    if (param != NULL && param->private_data_len > CM_REP_PDATA) {
        cm_dbg("rdma_accept: %u bytes of private data, at most %d", param->private_data_len,
               CM_REP_PDATA);
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&g_cm);
    if (id->state != S_REQ_RCVD) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_accept: the id has no pending connection request");
        errno = EINVAL;
        return -1;
    }
    if (cid->qp == NULL) {
        int st = param != NULL && param->qp_num != 0 ? fv_qp_state(cid->verbs, param->qp_num) : -1;
        if (st != IBV_QPS_RTR && st != IBV_QPS_RTS) {
            pthread_mutex_unlock(&g_cm);
            if (param == NULL || param->qp_num == 0) {
                cm_log("rdma_accept: the id has no QP: create one (rdma_create_qp) or pass the "
                       "number of your own in qp_num");
            } else {
                /* the real CM would answer, and the QP would drop what the peer sends */
                cm_log("rdma_accept: QP 0x%x is %s: a QP of the program's own must be in RTR "
                       "(rdma_init_qp_attr, ibv_modify_qp) before rdma_accept",
                       param->qp_num, fv_qp_state_str(st));
            }
            errno = EINVAL;
            return -1;
        }
        id->ext     = true;
        id->ext_qpn = param->qp_num;
    }
    s = sock_find(id->sock);
    if (s == NULL) {
        /* the requester went away before the answer */
        id->state = S_DONE;
        pthread_mutex_unlock(&g_cm);
        post_event(id, NULL, RDMA_CM_EVENT_CONNECT_ERROR, -ECONNRESET, NULL, 0, NULL);
        return 0;
    }
    if (param != NULL) {
        id->my_rnr_retry = param->rnr_retry_count;
        id->resp_res     = param->responder_resources;
        id->init_depth   = param->initiator_depth;
        m.pdlen          = param->private_data_len;
        if (param->private_data_len != 0) {
            memcpy(m.pdata, param->private_data, param->private_data_len);
        }
    } /* else the values of the request, as rdma_accept(3) says */
    m.resp_res   = id->resp_res;
    m.init_depth = id->init_depth;
    m.rnr_retry  = id->my_rnr_retry;
    ret          = cid->qp != NULL ? qp_connect(id) : 0;
    if (ret != 0) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_accept: moving the QP to RTR/RTS failed: %s", strerror(ret));
        errno = ret;
        return -1;
    }
    m.qpn = qpn_of(id);
    ret   = send_msg(s->fd, &m);
    if (ret != 0) {
        sock_del(s, false);
        id->sock  = 0;
        id->state = S_DONE;
        pthread_mutex_unlock(&g_cm);
        post_event(id, NULL, RDMA_CM_EVENT_CONNECT_ERROR, -ret, NULL, 0, NULL);
        return 0;
    }
    id->state = S_ACCEPTING;
    pthread_mutex_unlock(&g_cm);
    return 0;
}

FV_EXPORT int rdma_reject(struct rdma_cm_id *cid, const void *pdata, uint8_t pdlen)
{
    struct cm_id *id = (struct cm_id *)cid;
    struct cm_msg m  = {.magic = CM_MAGIC, .type = M_REJ, .pdlen = pdlen};
    struct cm_sock *s;
    if (pdlen > CM_REJ_PDATA) {
        cm_dbg("rdma_reject: %u bytes of private data, at most %d", pdlen, CM_REJ_PDATA);
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&g_cm);
    if (id->state != S_REQ_RCVD) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_reject: the id has no pending connection request");
        errno = EINVAL;
        return -1;
    }
    if (pdlen != 0) {
        memcpy(m.pdata, pdata, pdlen);
    }
    s = sock_find(id->sock);
    if (s != NULL) {
        int ret = send_msg(s->fd, &m);
        if (ret != 0) {
            cm_dbg("rdma_reject: the requester is gone (%s)", strerror(ret));
        }
        sock_del(s, false);
    }
    id->sock  = 0;
    id->state = S_DONE;
    pthread_mutex_unlock(&g_cm);
    return 0;
}

FV_EXPORT int rdma_disconnect(struct rdma_cm_id *cid)
{
    struct cm_id *id   = (struct cm_id *)cid;
    struct cm_chan *ch = (struct cm_chan *)cid->channel;
    bool done;
    int ret;
    pthread_mutex_lock(&g_cm);
    if (id->state != S_CONNECTED) {
        pthread_mutex_unlock(&g_cm);
        cm_dbg("rdma_disconnect: not connected");
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_unlock(&g_cm);
    qp_to_err(cid);
    pthread_mutex_lock(&ch->lock);
    done = id->disc_done;
    pthread_mutex_unlock(&ch->lock);
    if (done) {
        return 0; /* the peer disconnected first; our NIC has answered it */
    }
    ret = id->attached ? fv_qp_send_dreq(cid->verbs, qpn_of(id)) : ENOTCONN;
    if (ret != 0) {
        /* no one to tell: report the disconnection at once */
        conn_hook(id, FV_CM_EOF);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The connection thread (g_cm held) */

static void on_request(struct cm_sock *s)
{
    struct cm_id *l = s->id;
    struct cm_id *id;
    struct rdma_conn_param p    = {0};
    uint8_t pdata[CM_REQ_PDATA] = {0};
    if (s->msg.type != M_REQ) {
        sock_del(s, false);
        return;
    }
    id = calloc(1, sizeof(*id));
    if (id == NULL) {
        cm_log("connection request dropped: out of memory");
        sock_del(s, false);
        return;
    }
    id->id.channel  = l->id.channel;
    id->id.context  = l->id.context;
    id->id.ps       = l->id.ps;
    id->id.qp_type  = IBV_QPT_RC;
    id->id.verbs    = loopback_ctx();
    id->id.port_num = 1;
    id->lfd         = -1;
    id->tos         = l->tos;
    id->state       = S_REQ_RCVD;
    id->peer_qpn    = s->msg.qpn;
    id->peer_retry  = s->msg.retry;
    id->passive     = true;
    id->peer_known  = true;
    id->conn_known  = true;
    /* the responder's view until it accepts: what the requester asked for, swapped */
    id->resp_res     = s->msg.init_depth;
    id->init_depth   = s->msg.resp_res;
    id->my_rnr_retry = s->msg.rnr_retry;
    memcpy(&id->id.route.addr.src_storage, &s->msg.dst, sizeof(s->msg.dst));
    memcpy(&id->id.route.addr.dst_storage, &s->msg.src, sizeof(s->msg.src));
    if (id->id.verbs == NULL) {
        cm_log("connection request dropped: no device with an active port");
        free(id);
        sock_del(s, false);
        return;
    }
    route_set(id);
    ((struct cm_chan *)id->id.channel)->nids++;
    s->kind  = K_CONN;
    s->id    = id;
    s->got   = 0;
    id->sock = s->serial;
    /* the responder's view: what the requester asked for, swapped */
    p.responder_resources = s->msg.init_depth;
    p.initiator_depth     = s->msg.resp_res;
    p.retry_count         = s->msg.retry;
    p.rnr_retry_count     = s->msg.rnr_retry;
    p.qp_num              = s->msg.qpn;
    memcpy(pdata, s->msg.pdata, s->msg.pdlen);
    post_event(id, l, RDMA_CM_EVENT_CONNECT_REQUEST, 0, pdata, CM_REQ_PDATA, &p);
}

static void on_conn_msg(struct cm_sock *s)
{
    struct cm_id *id = s->id;
    int ret;
    if (id->state == S_CONNECTING && s->msg.type == M_REP) {
        struct rdma_conn_param p    = {0};
        uint8_t pdata[CM_REP_PDATA] = {0};
        struct cm_msg rtu           = {.magic = CM_MAGIC, .type = M_RTU};
        int fd                      = s->fd;
        /* as the IB CM does with a REP: the reads we may issue are the ones the responder
         * accepts, and we serve as many as it will issue */
        id->peer_qpn          = s->msg.qpn;
        id->peer_known        = true;
        id->resp_res          = s->msg.init_depth;
        id->init_depth        = s->msg.resp_res;
        p.responder_resources = s->msg.init_depth;
        p.initiator_depth     = s->msg.resp_res;
        p.rnr_retry_count     = s->msg.rnr_retry;
        p.qp_num              = s->msg.qpn;
        memcpy(pdata, s->msg.pdata, s->msg.pdlen);
        if (id->ext) {
            /* the program moves its QP, then completes the connection with rdma_establish */
            id->state = S_REP_RCVD;
            post_event(id, NULL, RDMA_CM_EVENT_CONNECT_RESPONSE, 0, pdata, CM_REP_PDATA, &p);
            return;
        }
        ret = qp_connect(id);
        if (ret == 0) {
            ret = send_msg(fd, &rtu);
        }
        if (ret != 0) {
            cm_log("connection to QP 0x%x failed: %s", s->msg.qpn, strerror(ret));
            sock_del(s, false);
            id->sock  = 0;
            id->state = S_DONE;
            post_event(id, NULL, RDMA_CM_EVENT_CONNECT_ERROR, -ret, NULL, 0, NULL);
            return;
        }
        sock_del(s, true);
        id->sock = 0;
        ret      = fv_qp_attach(id->id.verbs, qpn_of(id), fd, p.qp_num, conn_hook, id);
        if (ret != 0) {
            close(fd);
            id->state = S_DONE;
            post_event(id, NULL, RDMA_CM_EVENT_CONNECT_ERROR, -ret, NULL, 0, NULL);
            return;
        }
        id->attached = true;
        id->state    = S_CONNECTED;
        post_event(id, NULL, RDMA_CM_EVENT_ESTABLISHED, 0, pdata, CM_REP_PDATA, &p);
    } else if (id->state == S_CONNECTING && s->msg.type == M_REJ) {
        uint8_t pdata[CM_REJ_PDATA] = {0};
        memcpy(pdata, s->msg.pdata, s->msg.pdlen);
        sock_del(s, false);
        id->sock  = 0;
        id->state = S_DONE;
        qp_to_err(&id->id);
        post_event(id, NULL, RDMA_CM_EVENT_REJECTED, CM_REJ_CONSUMER, pdata, CM_REJ_PDATA, NULL);
    } else if (id->state == S_ACCEPTING && s->msg.type == M_RTU) {
        int fd                   = s->fd;
        struct rdma_conn_param p = {0};
        sock_del(s, true);
        id->sock = 0;
        p.qp_num = id->peer_qpn;
        ret      = fv_qp_attach(id->id.verbs, qpn_of(id), fd, id->peer_qpn, conn_hook, id);
        if (ret != 0) {
            close(fd);
            id->state = S_DONE;
            post_event(id, NULL, RDMA_CM_EVENT_CONNECT_ERROR, -ret, NULL, 0, NULL);
            return;
        }
        id->attached = true;
        id->state    = S_CONNECTED;
        post_event(id, NULL, RDMA_CM_EVENT_ESTABLISHED, 0, NULL, 0, &p);
    } else {
        cm_log("unexpected connection message %u in state %d", s->msg.type, id->state);
    }
}

static void on_conn_eof(struct cm_sock *s)
{
    struct cm_id *id = s->id;
    sock_del(s, false);
    id->sock = 0;
    if (id->state == S_CONNECTING) {
        id->state = S_DONE;
        qp_to_err(&id->id);
        post_event(id, NULL, RDMA_CM_EVENT_UNREACHABLE, -ECONNRESET, NULL, 0, NULL);
    } else if (id->state == S_ACCEPTING || id->state == S_REP_RCVD) {
        id->state = S_DONE;
        qp_to_err(&id->id);
        post_event(id, NULL, RDMA_CM_EVENT_CONNECT_ERROR, -ECONNRESET, NULL, 0, NULL);
    }
    /* S_REQ_RCVD: rdma_accept finds the socket gone and reports CONNECT_ERROR */
}

static void on_readable(struct cm_sock *s)
{
    for (;;) {
        ssize_t n = recv(s->fd, (uint8_t *)&s->msg + s->got, sizeof(s->msg) - s->got, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            if (s->kind == K_PEND) {
                sock_del(s, false);
            } else {
                on_conn_eof(s);
            }
            return;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        s->got += (size_t)n;
        if (s->got < sizeof(s->msg)) {
            continue;
        }
        s->got = 0;
        if (s->msg.magic != CM_MAGIC) {
            cm_log("garbage on a connection socket; closed");
            if (s->kind == K_PEND) {
                sock_del(s, false);
            } else {
                on_conn_eof(s);
            }
            return;
        }
        if (s->kind == K_PEND) {
            on_request(s);
        } else {
            on_conn_msg(s);
        }
        return; /* one message a round: after the last one the socket may belong to a NIC */
    }
}

static void on_listen(struct cm_sock *ls)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(ls->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            return;
        }
        if (sock_add(fd, K_PEND, ls->id) == NULL) {
            close(fd);
        }
    }
}

static void *cm_main(void *arg)
{
    for (;;) {
        struct epoll_event evs[32];
        int n = epoll_wait(g_epfd, evs, 32, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            cm_log("connection thread: epoll_wait: %s", strerror(errno));
            return NULL;
        }
        pthread_mutex_lock(&g_cm);
        if (g_cm_stop) {
            pthread_mutex_unlock(&g_cm);
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            uint64_t key = evs[i].data.u64;
            if (key == 0) {
                char b[64];
                while (read(g_wake[0], b, sizeof(b)) > 0) {
                }
            } else {
                struct cm_sock *s = sock_find(key);
                if (s != NULL && s->kind == K_LISTEN) {
                    on_listen(s);
                } else if (s != NULL) {
                    on_readable(s);
                }
            }
        }
        pthread_mutex_unlock(&g_cm);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* QPs of the program's own */

FV_EXPORT int rdma_init_qp_attr(struct rdma_cm_id *cid, struct ibv_qp_attr *qp_attr,
                                int *qp_attr_mask)
{
    int ret;
    pthread_mutex_lock(&g_cm);
    ret = init_attr((struct cm_id *)cid, qp_attr, qp_attr_mask);
    pthread_mutex_unlock(&g_cm);
    if (ret != 0) {
        errno = ret;
        return -1;
    }
    return 0;
}

/* The active side of a connection whose QP is the program's own: after CONNECT_RESPONSE (and
 * its QP in RTS), sends the RTU; the passive side gets ESTABLISHED, this side no event. */
FV_EXPORT int rdma_establish(struct rdma_cm_id *cid)
{
    struct cm_id *id  = (struct cm_id *)cid;
    struct cm_msg rtu = {.magic = CM_MAGIC, .type = M_RTU};
    struct cm_sock *s;
    int st, ret, fd;
    if (cid->qp != NULL) {
        cm_log("rdma_establish: the id has a QP of rdma_create_qp: librdmacm completes its "
               "connection itself");
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&g_cm);
    s = id->state == S_REP_RCVD ? sock_find(id->sock) : NULL;
    if (s == NULL) {
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_establish: no connect response to complete (RDMA_CM_EVENT_CONNECT_RESPONSE "
               "first)");
        errno = EINVAL;
        return -1;
    }
    st = fv_qp_state(cid->verbs, id->ext_qpn);
    if (st != IBV_QPS_RTS) {
        pthread_mutex_unlock(&g_cm);
        /* the real CM would complete the connection over a QP that cannot send */
        cm_log("rdma_establish: QP 0x%x is %s: move it to RTR and RTS (rdma_init_qp_attr, "
               "ibv_modify_qp) first",
               id->ext_qpn, fv_qp_state_str(st));
        errno = EINVAL;
        return -1;
    }
    fd  = s->fd;
    ret = send_msg(fd, &rtu);
    sock_del(s, ret == 0);
    id->sock = 0;
    if (ret == 0) {
        ret = fv_qp_attach(cid->verbs, id->ext_qpn, fd, id->peer_qpn, conn_hook, id);
        if (ret != 0) {
            close(fd);
        }
    }
    if (ret != 0) {
        id->state = S_DONE;
        pthread_mutex_unlock(&g_cm);
        cm_log("rdma_establish: %s", strerror(ret));
        errno = ret;
        return -1;
    }
    id->attached = true;
    id->state    = S_CONNECTED;
    pthread_mutex_unlock(&g_cm);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The rest of the librdmacm API: not modelled, and saying so */

FV_EXPORT int rdma_create_ep(struct rdma_cm_id **id, struct rdma_addrinfo *res, struct ibv_pd *pd,
                             struct ibv_qp_init_attr *qp_init_attr)
{
    cm_unsupported("rdma_create_ep");
    return -1;
}

FV_EXPORT void rdma_destroy_ep(struct rdma_cm_id *id)
{
    cm_unsupported("rdma_destroy_ep");
}

FV_EXPORT int rdma_create_qp_ex(struct rdma_cm_id *id, struct ibv_qp_init_attr_ex *qp_init_attr)
{
    cm_unsupported("rdma_create_qp_ex");
    return -1;
}

FV_EXPORT int rdma_get_request(struct rdma_cm_id *listen, struct rdma_cm_id **id)
{
    cm_unsupported("rdma_get_request (synchronous mode)");
    return -1;
}

FV_EXPORT int rdma_notify(struct rdma_cm_id *id, enum ibv_event_type event)
{
    cm_unsupported("rdma_notify");
    return -1;
}

FV_EXPORT int rdma_join_multicast(struct rdma_cm_id *id, struct sockaddr *addr, void *context)
{
    cm_unsupported("rdma_join_multicast");
    return -1;
}

FV_EXPORT int rdma_leave_multicast(struct rdma_cm_id *id, struct sockaddr *addr)
{
    cm_unsupported("rdma_leave_multicast");
    return -1;
}

FV_EXPORT int rdma_join_multicast_ex(struct rdma_cm_id *id, struct rdma_cm_join_mc_attr_ex *attr,
                                     void *context)
{
    cm_unsupported("rdma_join_multicast_ex");
    return -1;
}

FV_EXPORT int rdma_migrate_id(struct rdma_cm_id *id, struct rdma_event_channel *channel)
{
    cm_unsupported("rdma_migrate_id");
    return -1;
}

FV_EXPORT int rdma_getaddrinfo(const char *node, const char *service,
                               const struct rdma_addrinfo *hints, struct rdma_addrinfo **res)
{
    cm_unsupported("rdma_getaddrinfo");
    return -1;
}

FV_EXPORT void rdma_freeaddrinfo(struct rdma_addrinfo *res)
{
    cm_unsupported("rdma_freeaddrinfo");
}

FV_EXPORT int rdma_create_srq(struct rdma_cm_id *id, struct ibv_pd *pd,
                              struct ibv_srq_init_attr *attr)
{
    cm_unsupported("rdma_create_srq");
    return -1;
}

FV_EXPORT void rdma_destroy_srq(struct rdma_cm_id *id)
{
    cm_unsupported("rdma_destroy_srq");
}
