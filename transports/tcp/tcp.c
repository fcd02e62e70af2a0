/*
 * The TCP transport: several sockets per connection, payloads striped across them, one
 * edge-triggered epoll per instance, sends and receives straight from and into the caller's
 * buffers.
 *
 * Connection set-up. Each socket of a connection starts with a hello (20 bytes, little-endian):
 *   u32 magic "FXTH", u16 version, u16 socket index, u16 sockets in the connection,
 *   u16 caller hello length (socket 0 only, <= FX_TP_HELLO_MAX), u64 connection nonce
 * followed on socket 0 by the caller's hello bytes. The acceptor groups sockets by nonce and
 * hands out a connection once all of its sockets have arrived.
 *
 * Messages. Message k (both ends count) of payload length L is cut into S stripes:
 * S = min(nsocks, L / min_stripe) when L >= 2 * min_stripe, else 1; stripes are equal multiples
 * of 64 bytes but the last; stripe j travels on socket (k + j) % nsocks. Socket k % nsocks (the
 * lead) first carries a 16-byte frame: u32 magic "FXT1", u32 header length, u64 payload length,
 * then the header. The receiver computes the stripes from the length it posted; the lead frame
 * tells it whether the sender agreed (if not: FX_ERR_MISMATCH, the sender's header copied out,
 * the connection failed).
 *
 * Readiness: sockets are registered once, edge-triggered, and carry can-read / can-write flags
 * set by events and cleared on EAGAIN; progress() tries I/O only where a flag and queued work
 * meet, so an idle connection costs no syscall.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <ifaddrs.h>
#include <linux/errqueue.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fx_config_build.h"
#include "fx_log.h"
#include "fx_sock.h"
#include "transports/tcp/tcp_iface.h"
#include "transports/tcp/tcp_info.h"
#include "transports/transport.h"

#define TCP_DEFAULT_NSOCKS 2
#define TCP_MAX_NSOCKS     64
#define TCP_MIN_STRIPE     (64u << 10)
#define TCP_RX_RATE_MIN    (64u << 10) /* smaller receives are latency, not rate */
#define TCP_RX_WAITING     (64u << 10) /* a piece's first read this large found data waiting */
#define TCP_SOCKBUF        (4 << 20)
#define TCP_HELLO_LEN      20
#define TCP_FRAME_LEN      16
#define TCP_HELLO_MAGIC    0x48545846u /* "FXTH" */
#define TCP_FRAME_MAGIC    0x31545846u /* "FXT1" */
#define TCP_VERSION        1
#define TCP_MAX_ADDRS      8
#define TCP_ADDR_REC       19 /* u8 family | interface << 4, 16 bytes address, u16 port */
#define TCP_PENDING_MAX    256
#define TCP_ZC_MIN         (16u << 10) /* smaller sends copy: pinning costs more */
#define TCP_ZC_RANGES      32          /* releases remembered out of order */

enum obj_kind {
    OBJ_SOCK,
    OBJ_OTHER,
};

/* One stripe of one message queued on one socket. */
struct tcp_piece {
    struct tcp_piece *next;
    struct fx_tp_req *req;
    uint8_t *buf;
    size_t len;
    size_t done;
    bool lead;
    bool rx_begun;    /* receive: counted in conn->rx_active (rx_read) */
    bool zc_used;     /* some of it went with MSG_ZEROCOPY */
    uint32_t zc_last; /* the id of its last zerocopy send */
};

/* Pieces of one direction on one socket, in message order. */
struct tcp_queue {
    struct tcp_piece *head;
    struct tcp_piece *tail;
};

struct tcp_sock {
    enum obj_kind kind; /* first: epoll data points here */
    int fd;
    bool can_read;
    bool can_write;
    bool hup;
    struct fx_tp_conn *conn;
    struct tcp_queue sendq; /* full duplex: sends and receives queue separately */
    struct tcp_queue recvq;
    /* MSG_ZEROCOPY: a sent piece waits in zcq until the kernel releases its pages */
    bool zc;
    uint32_t zc_next; /* id of the next zerocopy send */
    uint32_t zc_low;  /* every id below is released */
    uint32_t zc_ranges[TCP_ZC_RANGES][2];
    int zc_nranges;
    struct tcp_queue zcq;
};

struct fx_tp_conn {
    struct fx_tp *tp;
    struct fx_tp_conn *next; /* in tp->conns */
    int nsocks;
    struct tcp_sock *socks;
    uint64_t send_seq;
    uint64_t recv_seq;
    fx_status failed;
    char error[200];
    char peer[64];
    /* set-up (connect side) */
    bool established;
    int addr_index;
    int naddrs;
    struct sockaddr_storage addrs[TCP_MAX_ADDRS];
    int ifs[TCP_MAX_ADDRS]; /* the peer's interface of each address (0..15) */
    /* Sockets spread over the peer's interfaces: socket s goes to addrs[rails[s % nrails]]. */
    bool spread;
    int rails[TCP_MAX_ADDRS];
    int nrails;
    uint8_t hello[TCP_HELLO_LEN + FX_TP_HELLO_MAX];
    size_t hello_len;
    int connected;
    size_t *hello_sent;
    /* messages of at least TCP_RX_RATE_MIN received (conn_stats, rx_read): bytes that arrived
     * while at least one of their pieces was arriving, and the time that lasted */
    uint64_t rx_bytes;
    uint64_t rx_ns;
    int rx_active; /* such pieces begun and not complete */
    int64_t rx_since;
};

struct fx_tp_req {
    struct fx_tp_req *next_free;
    struct fx_tp_req *all_next; /* every request of the instance, freed by fini */
    struct fx_tp_conn *conn;
    bool send;
    int pending; /* pieces not yet done */
    fx_status status;
    uint8_t frame[TCP_FRAME_LEN];
    uint8_t hdr[FX_TP_HDR_MAX];
    size_t hdrlen;
    uint8_t *user_hdr; /* receive: where the header goes */
    size_t len;
    struct tcp_piece pieces[];
};

/* An accepted socket waiting for its hello. */
struct tcp_pending {
    int fd;
    int64_t deadline;
    uint8_t buf[TCP_HELLO_LEN + FX_TP_HELLO_MAX];
    size_t have;
    bool hello_done;
    uint16_t index;
    uint16_t nsocks;
    uint16_t hlen;
    uint64_t nonce;
    char peer[64];
};

struct fx_tp_listener {
    enum obj_kind kind;
    struct fx_tp *tp;
    int fds[TCP_MAX_ADDRS];
    int nfds;
    struct tcp_pending pend[TCP_PENDING_MAX];
    int npend;
};

struct fx_tp {
    int epfd;
    int nsocks;
    size_t min_stripe;
    int timeout_ms;
    bool zerocopy;
    bool nsocks_auto; /* no FX_NSOCKS: one socket to a local peer, nsocks to others */
    char ifname[256];
    struct fx_tp_conn *conns;
    struct fx_tp_req *free_reqs[TCP_MAX_NSOCKS + 1];
    struct fx_tp_req *all_reqs;
};

/* ------------------------------------------------------------------ helpers */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void addr_str(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    fx_sock_addr_str((const struct sockaddr *)ss, buf, len);
}

static void tune_socket(int fd)
{
    int one  = 1;
    int size = TCP_SOCKBUF;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

/* ------------------------------------------------------------------ instance */

static fx_status tcp_init(const struct fx_tp_config *cfg, struct fx_tp **out)
{
    struct fx_tp *tp = calloc(1, sizeof(*tp));

    if (tp == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    tp->nsocks      = cfg->nsocks > 0 ? cfg->nsocks : TCP_DEFAULT_NSOCKS;
    tp->nsocks_auto = cfg->nsocks <= 0;
    tp->min_stripe  = cfg->min_stripe > 0 ? cfg->min_stripe : TCP_MIN_STRIPE;
    tp->timeout_ms  = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    tp->zerocopy    = cfg->zerocopy;
    if (tp->nsocks > TCP_MAX_NSOCKS) {
        tp->nsocks = TCP_MAX_NSOCKS;
    }
    snprintf(tp->ifname, sizeof(tp->ifname), "%s", cfg->ifname != NULL ? cfg->ifname : "");
    tp->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (tp->epfd < 0) {
        fx_warn(FX_SUB_NET, "epoll_create1 failed: %s", strerror(errno));
        free(tp);
        return FX_ERR_SYSTEM;
    }
    *out = tp;
    return FX_OK;
}

static void tcp_fini(struct fx_tp *tp)
{
    while (tp->all_reqs != NULL) {
        struct fx_tp_req *r = tp->all_reqs;

        tp->all_reqs = r->all_next;
        free(r);
    }
    close(tp->epfd);
    free(tp);
}

static int tcp_wait_fd(struct fx_tp *tp)
{
    return tp->epfd;
}

/* ------------------------------------------------------------------ requests */

static struct fx_tp_req *req_get(struct fx_tp_conn *conn)
{
    struct fx_tp *tp    = conn->tp;
    struct fx_tp_req *r = tp->free_reqs[conn->nsocks];

    if (r != NULL) {
        tp->free_reqs[conn->nsocks] = r->next_free;
    } else {
        r = malloc(sizeof(*r) + sizeof(struct tcp_piece) * (size_t)conn->nsocks);
        if (r == NULL) {
            return NULL;
        }
        r->all_next  = tp->all_reqs;
        tp->all_reqs = r;
    }
    r->conn    = conn;
    r->pending = 0;
    r->status  = FX_INPROGRESS;
    return r;
}

static void req_put(struct fx_tp_req *r)
{
    struct fx_tp *tp = r->conn->tp;
    int slot         = r->conn->nsocks;

    r->next_free        = tp->free_reqs[slot];
    tp->free_reqs[slot] = r;
}

static void conn_fail(struct fx_tp_conn *conn, fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fails the connection: every queued piece's request completes with the status. After a
 * mismatch only the mismatched request (already marked) says FX_ERR_MISMATCH; the others, and
 * later posts, say FX_ERR_CONNECTION, so a header is never read from a request that has none. */
static void conn_fail(struct fx_tp_conn *conn, fx_status status, const char *fmt, ...)
{
    va_list ap;

    if (conn->failed != FX_OK) {
        return;
    }
    if (status == FX_ERR_MISMATCH) {
        status = FX_ERR_CONNECTION;
    }
    conn->failed = status;
    va_start(ap, fmt);
    vsnprintf(conn->error, sizeof(conn->error), fmt, ap);
    va_end(ap);
    fx_info(FX_SUB_NET, "connection to %s failed: %s", conn->peer, conn->error);
    for (int s = 0; s < conn->nsocks; s++) {
        struct tcp_sock *sk = &conn->socks[s];

        struct tcp_queue *qs[3] = {&sk->sendq, &sk->recvq, &sk->zcq};

        for (int d = 0; d < 3; d++) {
            for (struct tcp_piece *p = qs[d]->head; p != NULL; p = p->next) {
                if (p->req->status == FX_INPROGRESS) {
                    p->req->status = status;
                }
            }
            qs[d]->head = qs[d]->tail = NULL;
        }
    }
}

static void piece_queue(struct tcp_sock *sk, struct tcp_piece *p)
{
    struct tcp_queue *q = p->req->send ? &sk->sendq : &sk->recvq;

    p->next = NULL;
    if (q->tail != NULL) {
        q->tail->next = p;
    } else {
        q->head = p;
    }
    q->tail = p;
}

/* Cuts a message in stripes and queues one piece per stripe. */
static void stripe(struct fx_tp_conn *conn, struct fx_tp_req *r, uint8_t *buf, uint64_t seq)
{
    struct fx_tp *tp = conn->tp;
    size_t nstripes  = 1;
    size_t size;

    if (r->len >= 2 * tp->min_stripe) {
        nstripes = r->len / tp->min_stripe;
        if (nstripes > (size_t)conn->nsocks) {
            nstripes = (size_t)conn->nsocks;
        }
    }
    size = ((r->len + nstripes - 1) / nstripes + 63) & ~(size_t)63;
    for (size_t j = 0; j < nstripes; j++) {
        struct tcp_piece *p = &r->pieces[j];
        size_t off          = j * size;

        p->req      = r;
        p->buf      = buf + (off < r->len ? off : r->len);
        p->len      = off < r->len ? (r->len - off < size ? r->len - off : size) : 0;
        p->done     = 0;
        p->lead     = j == 0;
        p->rx_begun = false;
        p->zc_used  = false;
        r->pending++;
        piece_queue(&conn->socks[(seq + j) % (uint64_t)conn->nsocks], p);
    }
}

/* ------------------------------------------------------------------ data path */

/* The iovecs of what is left of a piece: lead frame, header, then the stripe. */
static int piece_iov(struct tcp_piece *p, struct iovec iov[3])
{
    struct fx_tp_req *r = p->req;
    size_t skip         = p->done;
    int n               = 0;

    if (p->lead) {
        if (skip < TCP_FRAME_LEN) {
            iov[n++] = (struct iovec){r->frame + skip, TCP_FRAME_LEN - skip};
            skip     = 0;
        } else {
            skip -= TCP_FRAME_LEN;
        }
        if (skip < r->hdrlen) {
            iov[n++] = (struct iovec){r->hdr + skip, r->hdrlen - skip};
            skip     = 0;
        } else {
            skip -= r->hdrlen;
        }
    }
    if (p->len > skip) {
        iov[n++] = (struct iovec){p->buf + skip, p->len - skip};
    }
    return n;
}

/* One sendmsg per attempt: small messages leave in a single system call. Large pieces go with
 * MSG_ZEROCOPY where enabled: the kernel pins the pages instead of copying them, and the piece
 * completes when the kernel says it has released them. */
static ssize_t piece_send(struct tcp_sock *sk, struct tcp_piece *p)
{
    struct iovec iov[3];
    struct msghdr msg;
    int flags = MSG_NOSIGNAL | MSG_DONTWAIT;
    ssize_t n;

    memset(&msg, 0, sizeof(msg));
    msg.msg_iov    = iov;
    msg.msg_iovlen = (size_t)piece_iov(p, iov);
    if (sk->zc && p->len - (p->done < p->len ? p->done : 0) >= TCP_ZC_MIN) {
        n = sendmsg(sk->fd, &msg, flags | MSG_ZEROCOPY);
        if (n >= 0) {
            p->zc_used = true;
            p->zc_last = sk->zc_next++;
            return n;
        }
        if (errno != ENOBUFS) {
            return n;
        }
        /* Too many pages pinned (optmem limit): this time, copy. */
    }
    return sendmsg(sk->fd, &msg, flags);
}

static void piece_done(struct tcp_queue *q)
{
    struct tcp_piece *p = q->head;

    q->head = p->next;
    if (q->head == NULL) {
        q->tail = NULL;
    }
    if (--p->req->pending == 0 && p->req->status == FX_INPROGRESS) {
        p->req->status = FX_OK;
    }
}

/* ------------------------------------------------------------------ MSG_ZEROCOPY */

/* id < low, with 32-bit wrap-around. */
static bool zc_before(uint32_t id, uint32_t low)
{
    return (int32_t)(id - low) < 0;
}

/* Zerocopy sends whose release has not been reported yet. */
static bool zc_outstanding(const struct tcp_sock *sk)
{
    return sk->zc_next != sk->zc_low;
}

/* Completes the parked pieces whose pages were all released. */
static void zc_complete(struct tcp_sock *sk)
{
    while (sk->zcq.head != NULL && zc_before(sk->zcq.head->zc_last, sk->zc_low)) {
        piece_done(&sk->zcq);
    }
}

/* Moves the fully written head of the send queue to the queue waiting for page release. */
static void zc_park(struct tcp_sock *sk)
{
    struct tcp_piece *p = sk->sendq.head;

    sk->sendq.head = p->next;
    if (sk->sendq.head == NULL) {
        sk->sendq.tail = NULL;
    }
    p->next = NULL;
    if (sk->zcq.tail != NULL) {
        sk->zcq.tail->next = p;
    } else {
        sk->zcq.head = p;
    }
    sk->zcq.tail = p;
    zc_complete(sk);
}

/* Records that the kernel released the pages of sends lo..hi; advances the low watermark over
 * ranges released in order, remembers the others, completes the pieces below the watermark. */
static void zc_release(struct tcp_sock *sk, uint32_t lo, uint32_t hi)
{
    bool moved = true;

    if (zc_before(sk->zc_low, lo) && sk->zc_nranges < TCP_ZC_RANGES) {
        sk->zc_ranges[sk->zc_nranges][0] = lo;
        sk->zc_ranges[sk->zc_nranges][1] = hi;
        sk->zc_nranges++;
    } else if (zc_before(sk->zc_low, hi + 1)) {
        sk->zc_low = hi + 1;
    }
    while (moved) {
        moved = false;
        for (int i = 0; i < sk->zc_nranges; i++) {
            if (!zc_before(sk->zc_low, sk->zc_ranges[i][0])) {
                if (zc_before(sk->zc_low, sk->zc_ranges[i][1] + 1)) {
                    sk->zc_low = sk->zc_ranges[i][1] + 1;
                }
                sk->zc_nranges--;
                sk->zc_ranges[i][0] = sk->zc_ranges[sk->zc_nranges][0];
                sk->zc_ranges[i][1] = sk->zc_ranges[sk->zc_nranges][1];
                moved               = true;
                break;
            }
        }
    }
    zc_complete(sk);
}

/* Reads the socket's error queue: release notifications, and the hint that the kernel copied
 * anyway (loopback and veth deliver locally and must copy), which turns zerocopy off for the
 * socket. Returns false when the error queue held a real error. */
static bool zc_drain(struct tcp_sock *sk)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        uint8_t control[256];
        struct msghdr msg;

        memset(&msg, 0, sizeof(msg));
        msg.msg_control    = control;
        msg.msg_controllen = sizeof(control);
        if (recvmsg(sk->fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            struct sock_extended_err ee;

            if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
                  (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR))) {
                continue;
            }
            memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
            if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY || ee.ee_errno != 0) {
                return false;
            }
            if ((ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0 && sk->zc) {
                sk->zc = false;
                fx_info(FX_SUB_NET,
                        "tcp: the kernel copies zerocopy sends to %s (a local peer?): "
                        "MSG_ZEROCOPY off for this socket",
                        sk->conn->peer);
            }
            zc_release(sk, ee.ee_info, ee.ee_data);
        }
    }
    return true;
}

static void sock_write(struct tcp_sock *sk)
{
    struct fx_tp_conn *conn = sk->conn;

    while (sk->sendq.head != NULL && sk->can_write && conn->failed == FX_OK) {
        struct tcp_piece *p = sk->sendq.head;
        size_t total        = p->len + (p->lead ? TCP_FRAME_LEN + p->req->hdrlen : 0);
        ssize_t n           = total > p->done ? piece_send(sk, p) : 0;

        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                sk->can_write = false;
            } else if (errno != EINTR) {
                conn_fail(conn, FX_ERR_PEER_FAILED, "%s by %s",
                          errno == EPIPE ? "connection closed" : strerror(errno), conn->peer);
            }
            return;
        }
        p->done += (size_t)n;
        if (p->done == total && p->zc_used) {
            zc_park(sk);
        } else if (p->done == total) {
            piece_done(&sk->sendq);
        }
    }
}

/* The lead frame arrived: check that the sender's lengths are the ones posted. */
static bool frame_ok(struct fx_tp_conn *conn, struct fx_tp_req *r)
{
    uint32_t magic  = get32(r->frame);
    uint32_t hdrlen = get32(r->frame + 4);
    uint64_t len    = get64(r->frame + 8);

    if (magic != TCP_FRAME_MAGIC) {
        conn_fail(conn, FX_ERR_CONNECTION, "garbage from %s (bad frame magic)", conn->peer);
        return false;
    }
    if (hdrlen != r->hdrlen || len != r->len) {
        r->status = FX_ERR_MISMATCH;
        conn_fail(conn, FX_ERR_MISMATCH,
                  "%s sent a message of %llu + %u bytes where %zu + %zu were expected", conn->peer,
                  (unsigned long long)len, hdrlen, r->hdrlen, r->len);
        return false;
    }
    return true;
}

/* One readv per attempt, frame, header and stripe together: the frame is checked as soon as
 * it is complete, and a mismatched message never writes past the posted buffers. */
static ssize_t piece_recv(struct tcp_sock *sk, struct tcp_piece *p)
{
    struct iovec iov[3];
    int n = piece_iov(p, iov);

    return n == 1 ? recv(sk->fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT)
                  : readv(sk->fd, iov, n);
}

/* After a frame mismatch: reads the rest of the sender's header (sent with the frame, so it is
 * there or about to be; bounded to 100 ms) and hands it up so the caller can say what differs. */
static void salvage_header(struct tcp_sock *sk, struct tcp_piece *p)
{
    struct fx_tp_req *r = p->req;
    uint32_t sent       = get32(r->frame + 4);
    size_t want         = sent < r->hdrlen ? sent : r->hdrlen;
    size_t have         = p->done > TCP_FRAME_LEN ? p->done - TCP_FRAME_LEN : 0;

    have = have < want ? have : want;
    for (int tries = 0; tries < 100 && have < want; tries++) {
        ssize_t n = recv(sk->fd, r->hdr + have, want - have, MSG_DONTWAIT);

        if (n > 0) {
            have += (size_t)n;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            break;
        } else {
            usleep(1000);
        }
    }
    if (r->user_hdr != NULL) {
        memcpy(r->user_hdr, r->hdr, have);
    }
}

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * Arrival rate of large messages: bytes over the time during which at least one of their
 * pieces was arriving (begun and not complete, on any socket of the connection: the stripes of
 * a message travel side by side). The read that opens such a stretch found data that came
 * before it and does not count, nor does a first read of another piece that finds
 * TCP_RX_WAITING bytes at once; what the stretch reads afterwards came while it was timed. So
 * a receiver that posts late, finds data waiting and reads it at memory speed does not inflate
 * the measure, and one that waits for its sender does not deflate it.
 */
static void rx_read(struct fx_tp_conn *conn, struct tcp_piece *p, size_t n)
{
    if (p->req->len < TCP_RX_RATE_MIN) {
        return;
    }
    if (conn->rx_active == 0) {
        conn->rx_since = mono_ns();
    } else if (p->rx_begun || n < TCP_RX_WAITING) {
        conn->rx_bytes += n;
    }
    if (!p->rx_begun) {
        p->rx_begun = true;
        conn->rx_active++;
    }
}

static void rx_end(struct fx_tp_conn *conn, struct tcp_piece *p)
{
    if (p->rx_begun && --conn->rx_active == 0) {
        conn->rx_ns += (uint64_t)(mono_ns() - conn->rx_since);
    }
}

static void sock_read(struct tcp_sock *sk)
{
    struct fx_tp_conn *conn = sk->conn;

    while (sk->recvq.head != NULL && sk->can_read && conn->failed == FX_OK) {
        struct tcp_piece *p = sk->recvq.head;
        size_t pre          = p->lead ? TCP_FRAME_LEN + p->req->hdrlen : 0;
        size_t before       = p->done;
        ssize_t n           = p->len + pre > p->done ? piece_recv(sk, p) : 0;

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            sk->can_read = false;
            return;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0 && p->len + pre > p->done) {
            conn_fail(conn, FX_ERR_PEER_FAILED, "%s by %s",
                      n == 0 ? "connection closed" : strerror(errno), conn->peer);
            return;
        }
        p->done += (size_t)n;
        rx_read(conn, p, (size_t)n);
        if (p->lead && before < TCP_FRAME_LEN && p->done >= TCP_FRAME_LEN &&
            !frame_ok(conn, p->req)) {
            if (p->req->status == FX_ERR_MISMATCH) {
                salvage_header(sk, p);
            }
            return;
        }
        if (p->done == p->len + pre) {
            struct fx_tp_req *r = p->req;

            if (p->lead && r->user_hdr != NULL) {
                memcpy(r->user_hdr, r->hdr, r->hdrlen);
            }
            rx_end(conn, p);
            piece_done(&sk->recvq);
        }
    }
}

static void sock_io(struct tcp_sock *sk)
{
    if (sk->sendq.head != NULL) {
        if (sk->hup) {
            /* The peer closed: what is queued here will never be read. */
            conn_fail(sk->conn, FX_ERR_PEER_FAILED, "connection closed by %s", sk->conn->peer);
            return;
        }
        sock_write(sk);
    }
    if (sk->recvq.head != NULL) {
        sock_read(sk);
    }
}

static fx_status tcp_progress(struct fx_tp *tp)
{
    struct epoll_event evs[64];
    int n;

    do {
        n = epoll_wait(tp->epfd, evs, 64, 0);
        for (int i = 0; i < n; i++) {
            struct tcp_sock *sk = evs[i].data.ptr;

            if (sk == NULL || sk->kind != OBJ_SOCK) {
                continue;
            }
            uint32_t e = evs[i].events;

            if ((e & EPOLLERR) != 0 && zc_outstanding(sk) && zc_drain(sk)) {
                /* Only release notifications: not a socket error. */
                e &= ~(uint32_t)EPOLLERR;
            }
            sk->can_read |= (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
            sk->can_write |= (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
            sk->hup |= (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
        }
    } while (n == 64);
    for (struct fx_tp_conn *c = tp->conns; c != NULL; c = c->next) {
        if (!c->established) {
            continue;
        }
        for (int s = 0; s < c->nsocks && c->failed == FX_OK; s++) {
            sock_io(&c->socks[s]);
        }
    }
    return FX_OK;
}

static fx_status post(struct fx_tp_conn *conn, bool send, const void *hdr, size_t hdrlen,
                      const void *buf, size_t len, struct fx_tp_req **out)
{
    struct fx_tp_req *r;
    uint64_t seq = send ? conn->send_seq++ : conn->recv_seq++;

    if (conn->failed != FX_OK) {
        return conn->failed;
    }
    if (hdrlen > FX_TP_HDR_MAX) {
        return FX_ERR_INVALID_ARG;
    }
    r = req_get(conn);
    if (r == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    r->send     = send;
    r->hdrlen   = hdrlen;
    r->len      = len;
    r->user_hdr = send ? NULL : (uint8_t *)hdr;
    if (send) {
        put32(r->frame, TCP_FRAME_MAGIC);
        put32(r->frame + 4, (uint32_t)hdrlen);
        put64(r->frame + 8, len);
        if (hdrlen > 0) {
            memcpy(r->hdr, hdr, hdrlen);
        }
    }
    stripe(conn, r, (uint8_t *)(uintptr_t)buf, seq);
    /* Latency: try the I/O now rather than at the next progress call. */
    for (int j = 0; j < r->pending; j++) {
        sock_io(&conn->socks[(seq + (uint64_t)j) % (uint64_t)conn->nsocks]);
    }
    *out = r;
    return FX_OK;
}

static fx_status tcp_isend(struct fx_tp_conn *conn, const void *hdr, size_t hdrlen, const void *buf,
                           size_t len, struct fx_tp_req **req)
{
    if (conn->socks[0].hup && conn->failed == FX_OK) {
        conn_fail(conn, FX_ERR_PEER_FAILED, "connection closed by %s", conn->peer);
    }
    return post(conn, true, hdr, hdrlen, buf, len, req);
}

static fx_status tcp_irecv(struct fx_tp_conn *conn, void *hdr, size_t hdrlen, void *buf, size_t len,
                           struct fx_tp_req **req)
{
    return post(conn, false, hdr, hdrlen, buf, len, req);
}

static fx_status tcp_test(struct fx_tp_req *r)
{
    fx_status status = r->status;

    if (status == FX_INPROGRESS && r->conn->failed == FX_OK) {
        /* Move whatever the sockets already allow (flags set, no system call otherwise):
         * the caller need not run progress() between tests. */
        for (int s = 0; s < r->conn->nsocks; s++) {
            struct tcp_sock *sk = &r->conn->socks[s];

            if (r->send ? sk->sendq.head != NULL && sk->can_write
                        : sk->recvq.head != NULL && sk->can_read) {
                sock_io(sk);
            }
            if (r->send && zc_outstanding(sk) && !zc_drain(sk)) {
                conn_fail(r->conn, FX_ERR_PEER_FAILED, "socket error on the connection to %s",
                          r->conn->peer);
            }
        }
        status = r->status;
    }

    if (status == FX_INPROGRESS && r->conn->failed != FX_OK) {
        status = r->conn->failed;
    }
    if (status == FX_INPROGRESS) {
        return FX_INPROGRESS;
    }
    /* A failed request may still have pieces on a failed connection's (emptied) queues. */
    req_put(r);
    return status;
}

/* ------------------------------------------------------------------ addresses */

/*
 * Published address: u8 count, then per address u8 family (4/6) with, in the high nibble, its
 * interface (the addresses of one interface share it: the connecting side spreads its sockets
 * over the interfaces), 16 bytes, u16 port.
 */
static void addr_pack(const struct sockaddr_storage *addrs, char (*names)[FX_TCP_IFNAME_LEN], int n,
                      uint16_t port, struct fx_tp_addr *out)
{
    memset(out, 0, sizeof(*out));
    out->data[0] = (uint8_t)n;
    for (int i = 0, nifs = 0; i < n; i++) {
        uint8_t *rec = out->data + 1 + i * TCP_ADDR_REC;
        int ifc      = 0;

        while (ifc < i && strcmp(names[ifc], names[i]) != 0) {
            ifc++;
        }
        ifc = ifc < i ? (out->data[1 + ifc * TCP_ADDR_REC] >> 4) : nifs++;
        if (addrs[i].ss_family == AF_INET) {
            rec[0] = (uint8_t)(4 | (ifc & 15) << 4);
            memcpy(rec + 1, &((const struct sockaddr_in *)&addrs[i])->sin_addr, 4);
        } else {
            rec[0] = (uint8_t)(6 | (ifc & 15) << 4);
            memcpy(rec + 1, &((const struct sockaddr_in6 *)&addrs[i])->sin6_addr, 16);
        }
        put16(rec + 17, port);
    }
    out->len = (uint32_t)(1 + n * TCP_ADDR_REC);
}

static int addr_unpack(const struct fx_tp_addr *in, struct sockaddr_storage *addrs, int *ifs)
{
    int n = in->len >= 1 ? in->data[0] : 0;

    if (n > TCP_MAX_ADDRS || in->len != (uint32_t)(1 + n * TCP_ADDR_REC)) {
        return 0;
    }
    for (int i = 0; i < n; i++) {
        const uint8_t *rec = in->data + 1 + i * TCP_ADDR_REC;

        memset(&addrs[i], 0, sizeof(addrs[i]));
        ifs[i] = rec[0] >> 4;
        if ((rec[0] & 15) == 4) {
            struct sockaddr_in *a = (struct sockaddr_in *)&addrs[i];

            a->sin_family = AF_INET;
            memcpy(&a->sin_addr, rec + 1, 4);
            a->sin_port = htons(get16(rec + 17));
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addrs[i];

            a->sin6_family = AF_INET6;
            memcpy(&a->sin6_addr, rec + 1, 16);
            a->sin6_port = htons(get16(rec + 17));
        }
    }
    return n;
}

/* ------------------------------------------------------------------ listen / accept */

static int listen_any(int family)
{
    struct sockaddr_storage ss;
    int zero = 0;
    int fd   = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -1;
    }
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = (sa_family_t)family;
    if (family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    }
    if (bind(fd, (struct sockaddr *)&ss,
             family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) != 0 ||
        listen(fd, 1024) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static fx_status tcp_listen(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **out)
{
    struct sockaddr_storage addrs[TCP_MAX_ADDRS];
    char names[TCP_MAX_ADDRS][FX_TCP_IFNAME_LEN];
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    struct fx_tp_listener *l;
    int n = 0;
    fx_status status =
        fx_tcp_iface_list(tp->ifname[0] ? tp->ifname : NULL, addrs, names, TCP_MAX_ADDRS, &n);

    if (status != FX_OK || n == 0) {
        fx_warn(FX_SUB_NET, "no network interface matches FX_SOCKET_IFNAME=%s", tp->ifname);
        return status != FX_OK ? status : FX_ERR_CONNECTION;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    l->kind   = OBJ_OTHER;
    l->tp     = tp;
    l->fds[0] = listen_any(AF_INET6);
    if (l->fds[0] < 0) {
        l->fds[0] = listen_any(AF_INET);
    }
    if (l->fds[0] < 0 || getsockname(l->fds[0], (struct sockaddr *)&bound, &blen) != 0) {
        fx_warn(FX_SUB_NET, "cannot open a listening socket: %s", strerror(errno));
        if (l->fds[0] >= 0) {
            close(l->fds[0]);
        }
        free(l);
        return FX_ERR_SYSTEM;
    }
    l->nfds = 1;
    addr_pack(addrs, names, n, ntohs(((struct sockaddr_in *)&bound)->sin_port), addr);
    fx_info(FX_SUB_NET,
            "tcp: listening on port %u, interface %s (%d address%s), %d socket%s per "
            "connection%s",
            ntohs(((struct sockaddr_in *)&bound)->sin_port), names[0], n, n > 1 ? "es" : "",
            tp->nsocks, tp->nsocks > 1 ? "s" : "", tp->nsocks_auto ? " (1 to this host)" : "");
    *out = l;
    return FX_OK;
}

static void pend_drop(struct fx_tp_listener *l, int i, const char *why)
{
    if (why != NULL) {
        fx_warn(FX_SUB_NET, "tcp: dropped a connection from %s: %s", l->pend[i].peer, why);
    }
    close(l->pend[i].fd);
    l->pend[i] = l->pend[--l->npend];
}

static void accept_new(struct fx_tp_listener *l)
{
    for (int tries = 0; tries < 64 && l->npend < TCP_PENDING_MAX; tries++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fds[0], (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct tcp_pending *p;

        if (fd < 0) {
            return;
        }
        p = &l->pend[l->npend++];
        memset(p, 0, sizeof(*p));
        p->fd       = fd;
        p->deadline = fx_now_ms() + (l->tp->timeout_ms < 10000 ? l->tp->timeout_ms : 10000);
        addr_str(&ss, p->peer, sizeof(p->peer));
    }
}

/* Reads a pending socket's hello; returns a reason to drop it, or NULL. */
static const char *pend_read(struct tcp_pending *p)
{
    size_t need = TCP_HELLO_LEN + (p->have >= TCP_HELLO_LEN ? p->hlen : 0);
    ssize_t n;

    if (p->hello_done) {
        return NULL;
    }
    n = recv(p->fd, p->buf + p->have, need - p->have, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        return "closed before its hello";
    }
    if (n < 0) {
        return NULL;
    }
    p->have += (size_t)n;
    if (p->have == TCP_HELLO_LEN) {
        p->index  = get16(p->buf + 6);
        p->nsocks = get16(p->buf + 8);
        p->hlen   = get16(p->buf + 10);
        p->nonce  = get64(p->buf + 12);
        if (get32(p->buf) != TCP_HELLO_MAGIC || get16(p->buf + 4) != TCP_VERSION) {
            return "not a libfabricx tcp hello";
        }
        if (p->nsocks < 1 || p->nsocks > TCP_MAX_NSOCKS || p->index >= p->nsocks ||
            p->hlen > FX_TP_HELLO_MAX || (p->index > 0 && p->hlen > 0)) {
            return "malformed hello";
        }
    }
    p->hello_done = p->have >= TCP_HELLO_LEN && p->have == (size_t)TCP_HELLO_LEN + p->hlen;
    return NULL;
}

static fx_status conn_alloc(struct fx_tp *tp, int nsocks, struct fx_tp_conn **out)
{
    struct fx_tp_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    c->socks      = calloc((size_t)nsocks, sizeof(*c->socks));
    c->hello_sent = calloc((size_t)nsocks, sizeof(size_t));
    if (c->socks == NULL || c->hello_sent == NULL) {
        free(c->socks);
        free(c->hello_sent);
        free(c);
        return FX_ERR_NO_MEMORY;
    }
    c->tp     = tp;
    c->nsocks = nsocks;
    for (int s = 0; s < nsocks; s++) {
        c->socks[s].kind = OBJ_SOCK;
        c->socks[s].fd   = -1;
        c->socks[s].conn = c;
    }
    *out = c;
    return FX_OK;
}

static bool zc_enable(int fd)
{
    int one = 1;

    if (setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) != 0) {
        fx_info(FX_SUB_NET, "tcp: SO_ZEROCOPY refused (%s): sends copy", strerror(errno));
        return false;
    }
    return true;
}

/* Registers an established connection's sockets with the epoll set. */
static fx_status conn_arm(struct fx_tp_conn *c)
{
    for (int s = 0; s < c->nsocks; s++) {
        struct epoll_event ev = {.events   = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = &c->socks[s]};

        tune_socket(c->socks[s].fd);
        c->socks[s].can_read  = true;
        c->socks[s].can_write = true;
        c->socks[s].zc        = c->tp->zerocopy && zc_enable(c->socks[s].fd);
        if (epoll_ctl(c->tp->epfd, EPOLL_CTL_ADD, c->socks[s].fd, &ev) != 0) {
            fx_warn(FX_SUB_NET, "epoll_ctl failed: %s", strerror(errno));
            return FX_ERR_SYSTEM;
        }
    }
    c->established = true;
    c->next        = c->tp->conns;
    c->tp->conns   = c;
    return FX_OK;
}

/* Builds a connection from the pending sockets of one nonce, once all have arrived. */
static bool pend_group(struct fx_tp_listener *l, int i, struct fx_tp_conn **out, void *hello,
                       size_t *hello_len)
{
    struct tcp_pending *p = &l->pend[i];
    int idx[TCP_MAX_NSOCKS];
    int found = 0;
    struct fx_tp_conn *c;

    for (int k = 0; k < p->nsocks; k++) {
        idx[k] = -1;
    }
    for (int j = 0; j < l->npend; j++) {
        struct tcp_pending *q = &l->pend[j];

        if (q->hello_done && q->nonce == p->nonce && q->nsocks == p->nsocks && idx[q->index] < 0) {
            idx[q->index] = j;
            found++;
        }
    }
    if (found < p->nsocks || conn_alloc(l->tp, p->nsocks, &c) != FX_OK) {
        return false;
    }
    snprintf(c->peer, sizeof(c->peer), "%s", l->pend[idx[0]].peer);
    memcpy(hello, l->pend[idx[0]].buf + TCP_HELLO_LEN, l->pend[idx[0]].hlen);
    *hello_len = l->pend[idx[0]].hlen;
    for (int k = 0; k < c->nsocks; k++) {
        c->socks[k].fd     = l->pend[idx[k]].fd;
        l->pend[idx[k]].fd = -1;
    }
    for (int j = l->npend - 1; j >= 0; j--) {
        if (l->pend[j].fd < 0) {
            l->pend[j] = l->pend[--l->npend];
        }
    }
    if (conn_arm(c) != FX_OK) {
        for (int k = 0; k < c->nsocks; k++) {
            close(c->socks[k].fd);
        }
        free(c->socks);
        free(c->hello_sent);
        free(c);
        return false;
    }
    *out = c;
    return true;
}

static fx_status tcp_accept(struct fx_tp_listener *l, struct fx_tp_conn **conn, void *hello,
                            size_t *hello_len)
{
    int64_t now = fx_now_ms();

    accept_new(l);
    for (int i = l->npend - 1; i >= 0; i--) {
        const char *why = pend_read(&l->pend[i]);

        if (why == NULL && !l->pend[i].hello_done && now >= l->pend[i].deadline) {
            why = "no complete hello in time";
        }
        if (why != NULL) {
            pend_drop(l, i, why);
        }
    }
    for (int i = 0; i < l->npend; i++) {
        if (l->pend[i].hello_done && pend_group(l, i, conn, hello, hello_len)) {
            return FX_OK;
        }
    }
    return FX_INPROGRESS;
}

static void tcp_listen_close(struct fx_tp_listener *l)
{
    while (l->npend > 0) {
        pend_drop(l, l->npend - 1, NULL);
    }
    for (int i = 0; i < l->nfds; i++) {
        close(l->fds[i]);
    }
    free(l);
}

/* ------------------------------------------------------------------ connect */

static fx_status start_sockets(struct fx_tp_conn *c)
{
    uint64_t nonce;

    /* A new nonce for every attempt: the listener must not group a socket of this attempt with
     * one of an abandoned earlier attempt it still holds. */
    if (getentropy(&nonce, sizeof(nonce)) != 0) {
        return FX_ERR_SYSTEM;
    }
    put64(c->hello + 12, nonce);
    addr_str(&c->addrs[c->addr_index], c->peer, sizeof(c->peer));
    c->connected = 0;
    for (int s = 0; s < c->nsocks; s++) {
        const struct sockaddr_storage *a =
            &c->addrs[c->spread ? c->rails[s % c->nrails] : c->addr_index];
        socklen_t len =
            a->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        int fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        c->hello_sent[s] = 0;
        c->socks[s].fd   = fd;
        if (fd < 0) {
            return FX_ERR_SYSTEM;
        }
        tune_socket(fd);
        if (connect(fd, (const struct sockaddr *)a, len) != 0 && errno != EINPROGRESS) {
            char to[64];

            addr_str(a, to, sizeof(to));
            snprintf(c->error, sizeof(c->error), "connect to %s: %s", to, strerror(errno));
            return FX_ERR_CONNECTION;
        }
    }
    return FX_OK;
}

static void close_sockets(struct fx_tp_conn *c)
{
    for (int s = 0; s < c->nsocks; s++) {
        if (c->socks[s].fd >= 0) {
            close(c->socks[s].fd);
            c->socks[s].fd = -1;
        }
    }
}

/* Advances one socket: connected? hello written? Returns FX_OK when done. */
static fx_status sock_connect_step(struct fx_tp_conn *c, int s)
{
    int fd       = c->socks[s].fd;
    int err      = 0;
    socklen_t el = sizeof(err);
    size_t total = TCP_HELLO_LEN + (s == 0 ? c->hello_len : 0);
    uint8_t msg[TCP_HELLO_LEN + FX_TP_HELLO_MAX];
    ssize_t n;

    if (c->hello_sent[s] == total) {
        return FX_OK;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
        char to[64];

        addr_str(&c->addrs[c->spread ? c->rails[s % c->nrails] : c->addr_index], to, sizeof(to));
        snprintf(c->error, sizeof(c->error), "connect to %s: %s", to, strerror(err));
        return FX_ERR_CONNECTION;
    }
    memcpy(msg, c->hello, TCP_HELLO_LEN);
    put16(msg + 6, (uint16_t)s);
    put16(msg + 10, (uint16_t)(s == 0 ? c->hello_len : 0));
    memcpy(msg + TCP_HELLO_LEN, c->hello + TCP_HELLO_LEN, s == 0 ? c->hello_len : 0);
    n = send(fd, msg + c->hello_sent[s], total - c->hello_sent[s], MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == ENOTCONN || errno == EINTR)) {
        return FX_INPROGRESS;
    }
    if (n < 0) {
        snprintf(c->error, sizeof(c->error), "connect to %s: %s", c->peer, strerror(errno));
        return FX_ERR_CONNECTION;
    }
    c->hello_sent[s] += (size_t)n;
    return c->hello_sent[s] == total ? FX_OK : FX_INPROGRESS;
}

/* Loopback, or an address of one of this host's interfaces: the kernel delivers it locally. */
static bool addr_is_local(const struct sockaddr_storage *ss)
{
    struct ifaddrs *ifs = NULL;
    bool local          = false;
    struct in6_addr a6;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

        if ((ntohl(in->sin_addr.s_addr) >> 24) == 127) {
            return true;
        }
    } else {
        a6 = ((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(&a6)) {
            return true;
        }
    }
    if (getifaddrs(&ifs) != 0) {
        return false;
    }
    for (struct ifaddrs *i = ifs; i != NULL && !local; i = i->ifa_next) {
        if (i->ifa_addr == NULL || i->ifa_addr->sa_family != ss->ss_family) {
            continue;
        }
        if (ss->ss_family == AF_INET) {
            local = ((const struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr ==
                    ((const struct sockaddr_in *)ss)->sin_addr.s_addr;
        } else {
            local = memcmp(&((const struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, &a6,
                           sizeof(a6)) == 0;
        }
    }
    freeifaddrs(ifs);
    return local;
}

/*
 * Several sockets and a peer with several interfaces: socket s connects to the peer's address on
 * interface s % n (of the first address's family), so a connection's stripes cross all of them,
 * each through the local interface the routes choose for that address (rails on separate
 * subnets use one NIC each). Should any socket fail to connect, all of them retry on the first
 * address alone (tcp_connect).
 */
static void plan_rails(struct fx_tp_conn *c)
{
    c->nrails = 0;
    for (int i = 0; i < c->naddrs; i++) {
        bool seen = c->addrs[i].ss_family != c->addrs[0].ss_family;

        for (int k = 0; k < c->nrails && !seen; k++) {
            seen = c->ifs[c->rails[k]] == c->ifs[i];
        }
        if (!seen) {
            c->rails[c->nrails++] = i;
        }
    }
    c->spread = c->nrails > 1 && c->nsocks > 1;
    if (c->spread) {
        char first[64], second[64];

        addr_str(&c->addrs[c->rails[0]], first, sizeof(first));
        addr_str(&c->addrs[c->rails[1]], second, sizeof(second));
        fx_info(FX_SUB_NET, "tcp: %d sockets to %s spread over its %d interfaces (%s, %s%s)",
                c->nsocks, first, c->nrails, first, second, c->nrails > 2 ? ", ..." : "");
    }
}

/*
 * After a failed attempt (c->error says why): the same address without spreading over the
 * peer's interfaces, then its other addresses in turn. FX_INPROGRESS while one is under way,
 * FX_ERR_CONNECTION when none is left.
 */
static fx_status retry_sockets(struct fx_tp_conn *c)
{
    for (;;) {
        close_sockets(c);
        if (c->spread) {
            fx_warn(FX_SUB_NET,
                    "tcp: %s; not spreading this connection over the peer's %d "
                    "interfaces",
                    c->error, c->nrails);
            c->spread = false;
        } else if (++c->addr_index >= c->naddrs) {
            fx_warn(FX_SUB_NET, "tcp: %s", c->error);
            return FX_ERR_CONNECTION;
        }
        if (start_sockets(c) == FX_OK) {
            return FX_INPROGRESS;
        }
    }
}

static fx_status connect_begin(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                               size_t hello_len, struct fx_tp_conn **out)
{
    struct fx_tp_conn *c;
    fx_status status;

    struct sockaddr_storage addrs[TCP_MAX_ADDRS];
    int ifs[TCP_MAX_ADDRS];
    int naddrs = addr_unpack(addr, addrs, ifs);
    int nsocks = tp->nsocks;

    if (hello_len > FX_TP_HELLO_MAX || naddrs == 0) {
        return FX_ERR_INVALID_ARG;
    }
    if (tp->nsocks_auto && addr_is_local(&addrs[0])) {
        nsocks = 1; /* delivered by this kernel: one stream is fastest (BENCHMARKS.md) */
    }
    status = conn_alloc(tp, nsocks, &c);
    if (status != FX_OK) {
        return status;
    }
    c->naddrs = naddrs;
    memcpy(c->addrs, addrs, sizeof(addrs));
    memcpy(c->ifs, ifs, sizeof(ifs));
    plan_rails(c);
    put32(c->hello, TCP_HELLO_MAGIC);
    put16(c->hello + 4, TCP_VERSION);
    put16(c->hello + 8, (uint16_t)c->nsocks);
    memcpy(c->hello + TCP_HELLO_LEN, hello, hello_len);
    c->hello_len = hello_len;
    *out         = c;
    return start_sockets(c) == FX_OK ? FX_INPROGRESS : retry_sockets(c);
}

static fx_status tcp_connect(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                             size_t hello_len, struct fx_tp_conn **conn)
{
    struct fx_tp_conn *c = *conn;
    int done             = 0;

    if (c == NULL) {
        fx_status status = connect_begin(tp, addr, hello, hello_len, conn);

        if (status != FX_INPROGRESS) {
            return status;
        }
        c = *conn;
    }
    for (int s = 0; s < c->nsocks; s++) {
        fx_status status = sock_connect_step(c, s);

        if (status == FX_ERR_CONNECTION) {
            return retry_sockets(c);
        }
        done += status == FX_OK;
    }
    if (done < c->nsocks) {
        return FX_INPROGRESS;
    }
    return conn_arm(c);
}

static void tcp_close(struct fx_tp_conn *c)
{
    struct fx_tp_conn **pp = &c->tp->conns;

    while (*pp != NULL && *pp != c) {
        pp = &(*pp)->next;
    }
    if (*pp == c) {
        *pp = c->next;
    }
    /* Queued requests are abandoned with the connection; fini frees them. */
    close_sockets(c);
    free(c->socks);
    free(c->hello_sent);
    free(c);
}

static void tcp_conn_error(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->failed != FX_OK ? c->error : "no error");
}

static void tcp_conn_peer(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->peer);
}

static bool tcp_conn_stats(struct fx_tp_conn *c, struct fx_tp_conn_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (!c->established) {
        return false;
    }
    st->recv_bytes = c->rx_bytes;
    st->recv_ns    = c->rx_ns;
    if (c->rx_active > 0) {
        /* The stretch still arriving counts up to now, as its bytes read so far do: on a link
         * that never idles (a bottleneck's) a stretch outlasts the monitor's windows, which
         * would otherwise see its bytes and none of its time. */
        st->recv_ns += (uint64_t)(mono_ns() - c->rx_since);
    }
    for (int i = 0; i < c->nsocks; i++) {
        uint64_t acked;
        uint64_t busy_us;

        if (c->socks[i].fd < 0 || !fx_tcp_sock_wire(c->socks[i].fd, &acked, &busy_us)) {
            return false;
        }
        st->bytes_acked += acked;
        if (busy_us * 1000 > st->busy_ns) {
            st->busy_ns = busy_us * 1000;
        }
    }
    return true;
}

const struct fx_transport_ops fx_tcp_ops = {
    .name         = "tcp",
    .caps         = FX_TP_CAP_HOST_MEM,
    .init         = tcp_init,
    .fini         = tcp_fini,
    .progress     = tcp_progress,
    .wait_fd      = tcp_wait_fd,
    .listen       = tcp_listen,
    .listen_close = tcp_listen_close,
    .connect      = tcp_connect,
    .accept       = tcp_accept,
    .close        = tcp_close,
    .isend        = tcp_isend,
    .irecv        = tcp_irecv,
    .test         = tcp_test,
    .conn_error   = tcp_conn_error,
    .conn_peer    = tcp_conn_peer,
    .conn_stats   = tcp_conn_stats,
};
