/*
 * The shared-memory transport: ranks of one host exchange messages through rings in memory both
 * map, with no system call on the data path while both sides are busy.
 *
 * Connection set-up. The listener is an abstract UNIX socket (SOCK_SEQPACKET, name drawn at
 * random: nothing in the file system). connect() creates the connection's segment with
 * memfd_create (no name in /dev/shm, so a crash leaves nothing behind; it disappears with the
 * last mapping) and two eventfds, and sends them to the listener with SCM_RIGHTS in one packet:
 *   u32 magic "FXSH", u16 version, u16 hello length, u32 slots, u32 slot bytes, hello
 * The acceptor maps the segment and hands the connection up with the hello, which the core
 * authenticates (HMAC under the job secret) as for any transport. The UNIX socket stays open:
 * when a peer dies the kernel closes it, and the survivor sees a hang-up at once.
 *
 * Segment: two rings, one per direction (the connecting side writes ring 0 and reads ring 1).
 * A ring is a control block of four cache lines, so that no line is written by both sides: one
 * set at start (the producer's pid and probe buffer), the consumer's (tail: slots consumed, and
 * single-copy acks), and one line per side for its sleep flag; then `nslots` slots. A slot
 * starts with a 16-byte header (its sequence number, bytes used) followed by its data in the
 * same cache line. The producer fills slot pos % nslots while pos - tail < nslots (it re-reads
 * tail only when its last copy says the ring is full), then publishes the slot by storing its
 * sequence number pos + 1 (release); the consumer polls the slot it expects, not a shared
 * counter, so a small message costs the reader the one or two lines it lands in. A message is
 * a 16-byte frame (magic, header length, payload length), the header and the payload, packed
 * into consecutive slots; messages on one ring arrive in order. A message that fits one slot
 * goes with an 8-byte frame instead (magic, a mask of the header's 8-byte words that differ
 * from the last such message's, header length, payload length), only those words, then the
 * payload: both sides keep that last header, so a loop of small collectives (whose headers
 * differ in the operation number alone) puts 16 + 8 + 8 bytes before its payload and an 8-byte
 * all-reduce fits one cache line. The receiver checks the frame against its posted
 * lengths: a mismatch completes that receive with FX_ERR_MISMATCH (the sender's header copied
 * out), nothing is written past the posted buffers, and the connection fails.
 *
 * Waiting: the core polls the transport, and sleeps in epoll on wait_fd() only when nothing
 * moves. A side that finds its ring empty (or full) raises its sleep flag, re-checks the ring
 * (so no wake-up is lost), and the other side then writes the sleeper's eventfd after it
 * published; the eventfd is in the transport's epoll set. So an idle rank uses no CPU, and
 * while both sides poll there is no system call at all. (A futex cannot join the epoll set the
 * executor sleeps on together with the control plane; an eventfd can.)
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "fx_log.h"
#include "fx_sock.h"
#include "transports/tp_bytes.h"
#include "transports/transport.h"

#define SHM_MAGIC        0x48535846u /* "FXSH" */
#define SHM_FRAME        0x31535846u /* "FXS1" */
#define SHM_VERSION      2
#define SHM_NSLOTS       32
#define SHM_SLOT_BYTES   (64u << 10)
#define SHM_SLOT_HDR     16 /* sequence and bytes used, then the data in the same line */
#define SHM_SLOT_CAP     (SHM_SLOT_BYTES + SHM_LINE - SHM_SLOT_HDR) /* data bytes per slot */
#define POLL_CLOCK_EVERY 16 /* shm_progress calls between two looks at the clock */
#define SHM_HELLO_HDR    16
#define SHM_FRAME_LEN    16
#define SHM_LINE         64
#define SHM_NAME_LEN     48
#define SHM_PENDING      64
#define SHM_FRAME_CMA    0x32535846u  /* "FXS2": the payload stays in the sender's memory */
#define SHM_CMA_MIN      (256u << 10) /* smaller payloads go through the ring */
#define SHM_CMA_DESC     16           /* u64 address, u64 length, after frame and header */
#define SHM_FRAME_SMALL  0x33535846u  /* "FXS3": header words changed since the last one */
#define SHM_SMALL_LEN    8            /* u32 magic, u8 word mask, u8 hdrlen, u16 payload length */
#define SHM_HDR_WORDS    ((FX_TP_HDR_MAX + 7) / 8)
_Static_assert(SHM_HDR_WORDS <= 8, "a compact frame's word mask is one byte");

/* Shared: the control block of one ring, a cache line per writer and rate. */
struct shm_ctl {
    /* Set once, at start. */
    _Atomic int32_t producer_pid;      /* producer: whose memory single-copy reads come from */
    _Atomic int32_t consumer_can_read; /* consumer: 0 unknown, 1 it may read the producer's
                                          memory (process_vm_readv), 2 it may not */
    uint64_t probe_addr;               /* producer: a buffer of its own holding probe[] */
    uint8_t probe[16];
    /* The consumer's, per message. */
    _Alignas(SHM_LINE) _Atomic uint64_t tail; /* slots consumed */
    _Atomic uint64_t cma_acked;               /* single-copy messages read */
    /* Each side's sleep flag: written when it goes to sleep or wakes, read on every publish. */
    _Alignas(SHM_LINE) _Atomic uint32_t consumer_sleeps;
    _Alignas(SHM_LINE) _Atomic uint32_t producer_sleeps;
};
_Static_assert(sizeof(struct shm_ctl) == 4 * SHM_LINE, "the control block is four lines");
#define SHM_CTL_BYTES sizeof(struct shm_ctl)

/* Shared: the header of a slot; its data follows in the same cache line. */
struct shm_slot {
    _Atomic uint64_t seq; /* n + 1 once the n-th slot of the ring is published here */
    uint32_t used;        /* data bytes */
    uint32_t pad;
};
_Static_assert(sizeof(struct shm_slot) == SHM_SLOT_HDR, "slot header size");

struct shm_ring {
    struct shm_ctl *ctl;
    uint8_t ref[FX_TP_HDR_MAX]; /* the header of the last compact message on this ring */
    uint8_t *slots;             /* nslots * (SHM_LINE + slot_bytes) */
    uint64_t pos;  /* slots this side has published (producer) or consumed (consumer) */
    uint64_t tail; /* producer: the consumer's tail when last read */
};

/* One posted send or receive. */
struct fx_tp_req {
    struct fx_tp_req *next; /* in its queue, then in the free list */
    struct fx_tp_req *all_next;
    struct fx_tp_conn *conn;
    bool send;
    fx_status status;
    uint8_t frame[SHM_FRAME_LEN];
    uint8_t hdr[FX_TP_HDR_MAX];
    size_t hdrlen;
    uint8_t *user_hdr;
    uint8_t *buf;
    size_t len;
    size_t done;      /* bytes of frame + header + payload moved */
    bool cma;         /* single copy: the receiver reads the payload from the sender */
    uint64_t cma_seq; /* send: which ack completes it */
    uint64_t cma_addr;
};

struct req_queue {
    struct fx_tp_req *head;
    struct fx_tp_req *tail;
};

#include "transports/tp_queue.h"

enum obj_kind { OBJ_LISTENER, OBJ_CONN_SOCK, OBJ_CONN_EVENT };

struct epoll_tag {
    enum obj_kind kind;
    void *obj;
};

struct fx_tp_conn {
    struct fx_tp *tp;
    struct fx_tp_conn *next;
    int sock;     /* the UNIX socket: set-up, then liveness */
    int my_efd;   /* written by the peer to wake us */
    int peer_efd; /* we write it to wake the peer */
    uint8_t *seg;
    size_t seg_len;
    struct shm_ring out; /* we produce */
    struct shm_ring in;  /* we consume */
    struct req_queue sendq;
    struct req_queue recvq;
    struct req_queue cmaq; /* sends whose payload the peer reads: waiting for its ack */
    uint64_t cma_sent;
    uint8_t probe[16]; /* read by the peer to learn whether it may read our memory */
    struct epoll_tag sock_tag;
    struct epoll_tag efd_tag;
    fx_status failed;
    char error[200];
    char peer[64];
    bool connected;   /* connect side: the set-up packet went out */
    bool wake_out;    /* we published since the peer's consumer sleep flag was last checked */
    bool wake_in;     /* we consumed or acked since its producer sleep flag was last checked */
    bool peer_closed; /* its socket hung up: what it published is still read, then it fails */
};

struct shm_pending {
    int fd;
    int64_t deadline;
};

struct fx_tp_listener {
    struct fx_tp *tp;
    int fd;
    struct epoll_tag tag;
    struct shm_pending pend[SHM_PENDING];
    int npend;
};

struct fx_tp {
    int epfd;
    int timeout_ms;
    bool armed;           /* sleep flags raised: the caller may be asleep */
    int64_t last_poll_us; /* when the epoll set was last read */
    uint32_t polls;       /* progress calls; the clock is read every POLL_CLOCK_EVERY of them */
    struct fx_tp_conn *conns;
    struct fx_tp_req *free_reqs;
    struct fx_tp_req *all_reqs;
};

/* ------------------------------------------------------------------ helpers */

static void conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fails the connection: queued requests complete with the status (after a mismatch: the
 * mismatched one, already marked, keeps FX_ERR_MISMATCH; the others get FX_ERR_CONNECTION). */
static void conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
{
    struct req_queue *qs[3] = {&c->sendq, &c->recvq, &c->cmaq};
    va_list ap;

    if (c->failed != FX_OK) {
        return;
    }
    if (status == FX_ERR_MISMATCH) {
        status = FX_ERR_CONNECTION;
    }
    c->failed = status;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    fx_info(FX_SUB_NET, "shm connection to %s failed: %s", c->peer, c->error);
    for (int d = 0; d < 3; d++) {
        for (struct fx_tp_req *r = qs[d]->head; r != NULL; r = r->next) {
            if (r->status == FX_INPROGRESS) {
                r->status = status;
            }
        }
        qs[d]->head = qs[d]->tail = NULL;
    }
}

static void wake(int efd)
{
    uint64_t one = 1;

    if (write(efd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is saturated, a wake-up is pending anyway. */
    }
}

static uint8_t *slot_data(const struct shm_ring *r, uint64_t i)
{
    return r->slots + (i % SHM_NSLOTS) * (SHM_LINE + SHM_SLOT_BYTES) + SHM_SLOT_HDR;
}

static struct shm_slot *slot_hdr(const struct shm_ring *r, uint64_t i)
{
    return (struct shm_slot *)(r->slots + (i % SHM_NSLOTS) * (SHM_LINE + SHM_SLOT_BYTES));
}

static size_t ring_bytes(void)
{
    return SHM_CTL_BYTES + (size_t)SHM_NSLOTS * (SHM_LINE + SHM_SLOT_BYTES);
}

/* Maps the two rings of a segment; the connecting side produces on ring 0. */
static void rings_attach(struct fx_tp_conn *c, bool connector)
{
    uint8_t *r0 = c->seg;
    uint8_t *r1 = c->seg + ring_bytes();

    c->out.ctl   = (struct shm_ctl *)(connector ? r0 : r1);
    c->out.slots = (connector ? r0 : r1) + SHM_CTL_BYTES;
    c->in.ctl    = (struct shm_ctl *)(connector ? r1 : r0);
    c->in.slots  = (connector ? r1 : r0) + SHM_CTL_BYTES;
    c->out.pos   = 0; /* a new segment: nothing published, nothing consumed */
    c->out.tail  = 0;
    c->in.pos    = 0;
    /* Offer single-copy reads of our memory: the peer probes this buffer. */
    if (getentropy(c->probe, sizeof(c->probe)) != 0) {
        memset(c->probe, 0x5c, sizeof(c->probe));
    }
    memcpy(c->out.ctl->probe, c->probe, sizeof(c->probe));
    c->out.ctl->probe_addr = (uint64_t)(uintptr_t)c->probe;
    atomic_store_explicit(&c->out.ctl->producer_pid, (int32_t)getpid(), memory_order_release);
}

/* Can we read the peer's memory with process_vm_readv (same user, ptrace scope allowing)?
 * Probed once per connection on the peer's probe buffer; the answer is published for the
 * peer, which then sends large payloads by reference. */
static void cma_probe(struct fx_tp_conn *c)
{
    int32_t pid;
    uint8_t got[16];
    struct iovec local = {got, sizeof(got)};
    struct iovec remote;
    bool ok;

    if (atomic_load_explicit(&c->in.ctl->consumer_can_read, memory_order_relaxed) != 0) {
        return; /* probed */
    }
    pid = atomic_load_explicit(&c->in.ctl->producer_pid, memory_order_acquire);
    if (pid == 0) {
        return;
    }
    remote = (struct iovec){(void *)(uintptr_t)c->in.ctl->probe_addr, sizeof(got)};
    ok     = process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)sizeof(got) &&
         memcmp(got, c->in.ctl->probe, sizeof(got)) == 0;
    fx_info(FX_SUB_NET, "shm: %s: large messages %s", c->peer,
            ok ? "single copy (process_vm_readv)"
               : "copied twice through the ring (process_vm_readv refused: ptrace scope?)");
    atomic_store_explicit(&c->in.ctl->consumer_can_read, ok ? 1 : 2, memory_order_release);
}

/* Sends whose payload the peer has read are complete. */
static void cma_complete(struct fx_tp_conn *c)
{
    uint64_t acked;

    if (c->cmaq.head == NULL) {
        return; /* no need to pull the consumer's line */
    }
    acked = atomic_load_explicit(&c->out.ctl->cma_acked, memory_order_acquire);
    while (c->cmaq.head != NULL && c->cmaq.head->cma_seq <= acked) {
        struct fx_tp_req *r = c->cmaq.head;

        queue_pop(&c->cmaq);
        r->status = FX_OK;
    }
}

/* ------------------------------------------------------------------ data path */

/*
 * The other half of the sleep handshake (arm_sleep): after publishing (or consuming), a fence,
 * then the peer's sleep flag, and its eventfd if it sleeps. Done late, not at each publish: the
 * fence waits for our stores to leave the core, which for a slot the peer polls means waiting
 * for the peer to give up its cache line; later that wait is over. It must still come before
 * anything that could leave the peer asleep for long, so it runs on every progress call, before
 * this side sleeps (prepare_wait), and when a request of the connection completes in test()
 * (an operation cannot finish before all its requests have been tested).
 */
static void conn_wake(struct fx_tp_conn *c)
{
    bool sleeps = false;

    if (!c->wake_out && !c->wake_in) {
        return;
    }
    atomic_thread_fence(memory_order_seq_cst);
    if (c->wake_out) {
        sleeps |= atomic_load_explicit(&c->out.ctl->consumer_sleeps, memory_order_relaxed) != 0;
    }
    if (c->wake_in) {
        sleeps |= atomic_load_explicit(&c->in.ctl->producer_sleeps, memory_order_relaxed) != 0;
    }
    c->wake_out = false;
    c->wake_in  = false;
    if (sleeps && c->failed == FX_OK) {
        wake(c->peer_efd);
    }
}

/* Producer: the slot at pos is filled with `used` bytes; its sequence number publishes it. */
static void slot_publish(struct shm_ring *o, uint32_t used)
{
    struct shm_slot *h = slot_hdr(o, o->pos);

    h->used = used;
    o->pos++;
    atomic_store_explicit(&h->seq, o->pos, memory_order_release);
}

/* Consumer: whether the slot it expects next is published. */
static bool slot_ready(const struct shm_ring *in)
{
    return atomic_load_explicit(&slot_hdr(in, in->pos)->seq, memory_order_acquire) == in->pos + 1;
}

/* Producer: sends r whole in the free slot at pos with a compact frame, if it fits one slot:
 * only the header words that differ from the last compact message's go (the consumer keeps
 * that header too). False when it does not fit (the caller frames it in full). */
static bool push_small(struct shm_ring *o, struct fx_tp_req *r)
{
    size_t words                   = (r->hdrlen + 7) / 8;
    uint8_t *dst                   = slot_data(o, o->pos);
    size_t used                    = SHM_SMALL_LEN;
    unsigned mask                  = 0;
    uint8_t cur[SHM_HDR_WORDS * 8] = {0};

    if (r->len > UINT16_MAX || SHM_SMALL_LEN + SHM_HDR_WORDS * 8 + r->len > SHM_SLOT_CAP) {
        return false;
    }
    memcpy(cur, r->hdr, r->hdrlen); /* the last word zero-padded on both sides */
    for (size_t w = 0; w < words; w++) {
        if (memcmp(cur + 8 * w, o->ref + 8 * w, 8) != 0) {
            mask |= 1u << w;
            memcpy(o->ref + 8 * w, cur + 8 * w, 8);
            memcpy(dst + used, cur + 8 * w, 8);
            used += 8;
        }
    }
    put32(dst, SHM_FRAME_SMALL);
    dst[4] = (uint8_t)mask;
    dst[5] = (uint8_t)r->hdrlen;
    put16(dst + 6, (uint16_t)r->len);
    if (r->len > 0) {
        memcpy(dst + used, r->buf, r->len);
    }
    slot_publish(o, (uint32_t)(used + r->len));
    r->done = SHM_FRAME_LEN + r->hdrlen + r->len;
    return true;
}

/* Copies what the head send request still has into free slots. Returns true if it moved. */
static bool push_sends(struct fx_tp_conn *c)
{
    struct shm_ring *o = &c->out;
    bool moved         = false;

    while (c->sendq.head != NULL && c->failed == FX_OK) {
        struct fx_tp_req *r = c->sendq.head;
        size_t total        = SHM_FRAME_LEN + r->hdrlen + r->len;
        uint8_t *dst;
        size_t room;
        size_t used = 0;

        if (o->pos - o->tail >= SHM_NSLOTS) {
            o->tail = atomic_load_explicit(&o->ctl->tail, memory_order_acquire);
            if (o->pos - o->tail >= SHM_NSLOTS) {
                break; /* full */
            }
        }
        if (r->done == 0 && push_small(o, r)) {
            moved = true;
            queue_pop(&c->sendq);
            r->status = FX_OK;
            continue;
        }
        dst  = slot_data(o, o->pos);
        room = SHM_SLOT_CAP;
        if (r->done == 0 && r->len >= SHM_CMA_MIN &&
            atomic_load_explicit(&o->ctl->consumer_can_read, memory_order_acquire) == 1) {
            /* By reference: frame, header and where the payload is; the peer reads it. */
            put32(r->frame, SHM_FRAME_CMA);
            memcpy(dst, r->frame, SHM_FRAME_LEN);
            memcpy(dst + SHM_FRAME_LEN, r->hdr, r->hdrlen);
            put64(dst + SHM_FRAME_LEN + r->hdrlen, (uint64_t)(uintptr_t)r->buf);
            put64(dst + SHM_FRAME_LEN + r->hdrlen + 8, r->len);
            slot_publish(o, (uint32_t)(SHM_FRAME_LEN + r->hdrlen + SHM_CMA_DESC));
            moved      = true;
            r->cma     = true;
            r->cma_seq = ++c->cma_sent;
            queue_pop(&c->sendq);
            queue_push(&c->cmaq, r);
            continue;
        }
        while (used < room && r->done < total) {
            size_t n;

            if (r->done < SHM_FRAME_LEN) {
                n = SHM_FRAME_LEN - r->done;
                memcpy(dst + used, r->frame + r->done, n);
            } else if (r->done < SHM_FRAME_LEN + r->hdrlen) {
                size_t off = r->done - SHM_FRAME_LEN;

                n = r->hdrlen - off < room - used ? r->hdrlen - off : room - used;
                memcpy(dst + used, r->hdr + off, n);
            } else {
                size_t off = r->done - SHM_FRAME_LEN - r->hdrlen;

                n = r->len - off < room - used ? r->len - off : room - used;
                memcpy(dst + used, r->buf + off, n);
            }
            used += n;
            r->done += n;
        }
        slot_publish(o, (uint32_t)used);
        moved = true;
        if (r->done == total) {
            queue_pop(&c->sendq);
            r->status = FX_OK;
        }
    }
    c->wake_out |= moved;
    return moved;
}

/* The frame of a receive arrived: the sender's lengths must be the posted ones. */
static bool frame_ok(struct fx_tp_conn *c, struct fx_tp_req *r, const uint8_t *frame,
                     const uint8_t *slot, size_t slot_used)
{
    uint32_t hdrlen = get32(frame + 4);
    uint64_t len    = get64(frame + 8);

    if (get32(frame) != SHM_FRAME && get32(frame) != SHM_FRAME_CMA) {
        conn_fail(c, FX_ERR_CONNECTION, "garbage from %s (bad frame magic)", c->peer);
        return false;
    }
    if (hdrlen == r->hdrlen && len == r->len) {
        return true;
    }
    if (r->user_hdr != NULL) { /* the sender's header, as much as we have room for */
        size_t n = hdrlen < r->hdrlen ? hdrlen : r->hdrlen;

        if (n > slot_used - SHM_FRAME_LEN) {
            n = slot_used - SHM_FRAME_LEN;
        }
        memcpy(r->user_hdr, slot + SHM_FRAME_LEN, n);
    }
    r->status = FX_ERR_MISMATCH;
    conn_fail(c, FX_ERR_MISMATCH,
              "%s sent a message of %llu + %u bytes where %zu + %zu were expected", c->peer,
              (unsigned long long)len, hdrlen, r->hdrlen, r->len);
    return false;
}

/* Reads a single-copy payload straight from the sender's buffer into the posted one, acks it,
 * and finishes the receive's header. False when the connection failed. */
static bool cma_pull(struct fx_tp_conn *c, struct fx_tp_req *r)
{
    int32_t pid = atomic_load_explicit(&c->in.ctl->producer_pid, memory_order_acquire);
    size_t got  = 0;

    while (got < r->len) {
        struct iovec local  = {r->buf + got, r->len - got};
        struct iovec remote = {(void *)(uintptr_t)(r->cma_addr + got), r->len - got};
        ssize_t n           = process_vm_readv(pid, &local, 1, &remote, 1, 0);

        if (n <= 0) {
            conn_fail(c, errno == ESRCH ? FX_ERR_PEER_FAILED : FX_ERR_CONNECTION,
                      "%s: cannot read its buffer: %s", c->peer,
                      errno == ESRCH ? "the process is gone" : strerror(errno));
            return false;
        }
        got += (size_t)n;
    }
    r->done += r->len;
    if (r->user_hdr != NULL && r->hdrlen > 0) {
        memcpy(r->user_hdr, r->hdr, r->hdrlen);
    }
    atomic_fetch_add_explicit(&c->in.ctl->cma_acked, 1, memory_order_release);
    c->wake_in = true;
    return true;
}

/* Consumer: a compact message for receive r in the slot at pos (`used` bytes at src): rebuilds
 * its header from the ring's last one and the words that changed, checks the lengths against
 * the posted ones, and delivers it. False when the connection failed (a mismatch: r gets
 * FX_ERR_MISMATCH and the sender's header, as far as it fits). */
static bool pull_small(struct fx_tp_conn *c, struct fx_tp_req *r, const uint8_t *src, size_t used)
{
    struct shm_ring *in = &c->in;
    unsigned mask       = src[4];
    size_t hdrlen       = src[5];
    size_t len          = get16(src + 6);
    size_t words        = (hdrlen + 7) / 8;
    size_t off          = SHM_SMALL_LEN;

    if (hdrlen > FX_TP_HDR_MAX || (mask >> words) != 0 ||
        used != SHM_SMALL_LEN + 8 * (size_t)__builtin_popcount(mask) + len) {
        conn_fail(c, FX_ERR_CONNECTION, "garbage from %s (bad compact frame)", c->peer);
        return false;
    }
    for (size_t w = 0; w < words; w++) {
        if (mask & (1u << w)) {
            memcpy(in->ref + 8 * w, src + off, 8);
            off += 8;
        }
    }
    if (hdrlen != r->hdrlen || len != r->len) {
        if (r->user_hdr != NULL) {
            memcpy(r->user_hdr, in->ref, hdrlen < r->hdrlen ? hdrlen : r->hdrlen);
        }
        r->status = FX_ERR_MISMATCH;
        conn_fail(c, FX_ERR_MISMATCH,
                  "%s sent a message of %zu + %zu bytes where %zu + %zu were expected", c->peer,
                  len, hdrlen, r->hdrlen, r->len);
        return false;
    }
    if (len > 0) {
        memcpy(r->buf, src + off, len);
    }
    if (r->user_hdr != NULL && hdrlen > 0) {
        memcpy(r->user_hdr, in->ref, hdrlen);
    }
    r->done = SHM_FRAME_LEN + hdrlen + len;
    return true;
}

/* Copies published slots into the posted receives. Returns true if it moved. */
static bool pull_recvs(struct fx_tp_conn *c)
{
    struct shm_ring *in = &c->in;
    bool moved          = false;

    while (c->recvq.head != NULL && c->failed == FX_OK) {
        struct fx_tp_req *r = c->recvq.head;
        size_t total        = SHM_FRAME_LEN + r->hdrlen + r->len;
        const uint8_t *src;
        size_t used;
        size_t off = 0;

        if (!slot_ready(in)) {
            break; /* empty */
        }
        src  = slot_data(in, in->pos);
        used = slot_hdr(in, in->pos)->used;
        if (used > SHM_SLOT_CAP) {
            conn_fail(c, FX_ERR_CONNECTION, "corrupt ring from %s", c->peer);
            break;
        }
        if (r->done == 0 && used >= SHM_SMALL_LEN && get32(src) == SHM_FRAME_SMALL) {
            if (!pull_small(c, r, src, used)) {
                break;
            }
            in->pos++;
            atomic_store_explicit(&in->ctl->tail, in->pos, memory_order_release);
            moved = true;
            queue_pop(&c->recvq);
            r->status = FX_OK;
            continue;
        }
        if (r->done == 0 && (used < SHM_FRAME_LEN || !frame_ok(c, r, src, src, used))) {
            if (c->failed == FX_OK) {
                conn_fail(c, FX_ERR_CONNECTION, "short frame from %s", c->peer);
            }
            break;
        }
        if (r->done == 0 && get32(src) == SHM_FRAME_CMA) {
            if (used != SHM_FRAME_LEN + r->hdrlen + SHM_CMA_DESC) {
                conn_fail(c, FX_ERR_CONNECTION, "bad single-copy descriptor from %s", c->peer);
                break;
            }
            memcpy(r->hdr, src + SHM_FRAME_LEN, r->hdrlen);
            r->cma_addr = get64(src + SHM_FRAME_LEN + r->hdrlen);
            r->cma      = true;
            r->done     = SHM_FRAME_LEN + r->hdrlen;
            in->pos++;
            atomic_store_explicit(&in->ctl->tail, in->pos, memory_order_release);
            moved = true;
            if (!cma_pull(c, r)) {
                break;
            }
            queue_pop(&c->recvq);
            r->status = FX_OK;
            continue;
        }
        while (off < used) {
            size_t n;

            if (r->done >= total) {
                conn_fail(c, FX_ERR_CONNECTION, "%s: a slot runs past its message", c->peer);
                return moved;
            }
            if (r->done < SHM_FRAME_LEN) {
                n = SHM_FRAME_LEN - r->done;
                memcpy(r->frame + r->done, src + off, n);
            } else if (r->done < SHM_FRAME_LEN + r->hdrlen) {
                size_t h = r->done - SHM_FRAME_LEN;

                n = r->hdrlen - h < used - off ? r->hdrlen - h : used - off;
                memcpy(r->hdr + h, src + off, n);
            } else {
                size_t p = r->done - SHM_FRAME_LEN - r->hdrlen;

                n = r->len - p < used - off ? r->len - p : used - off;
                memcpy(r->buf + p, src + off, n);
            }
            off += n;
            r->done += n;
        }
        in->pos++;
        atomic_store_explicit(&in->ctl->tail, in->pos, memory_order_release);
        moved = true;
        if (r->done == total) {
            if (r->user_hdr != NULL && r->hdrlen > 0) {
                memcpy(r->user_hdr, r->hdr, r->hdrlen);
            }
            queue_pop(&c->recvq);
            r->status = FX_OK;
        }
    }
    c->wake_in |= moved;
    return moved;
}

/* Before the caller sleeps: raise the sleep flags of what this side waits for, then look
 * again, so that a publish that raced with the flag is not missed (the peer reads the flag
 * after publishing). Returns true when something moved meanwhile. */
static bool arm_sleep(struct fx_tp_conn *c)
{
    bool want_in  = c->recvq.head != NULL;
    bool want_out = c->sendq.head != NULL || c->cmaq.head != NULL;

    atomic_store_explicit(&c->in.ctl->consumer_sleeps, want_in, memory_order_relaxed);
    atomic_store_explicit(&c->out.ctl->producer_sleeps, want_out, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    return (want_in && slot_ready(&c->in)) ||
           (c->sendq.head != NULL &&
            c->out.pos - atomic_load_explicit(&c->out.ctl->tail, memory_order_acquire) <
                SHM_NSLOTS) ||
           (c->cmaq.head != NULL &&
            atomic_load_explicit(&c->out.ctl->cma_acked, memory_order_acquire) >=
                c->cmaq.head->cma_seq);
}

/* Awake again: peers need not write our eventfd while we poll. */
static void disarm(struct fx_tp_conn *c)
{
    atomic_store_explicit(&c->in.ctl->consumer_sleeps, 0, memory_order_relaxed);
    atomic_store_explicit(&c->out.ctl->producer_sleeps, 0, memory_order_relaxed);
}

static void conn_io(struct fx_tp_conn *c)
{
    bool moved = true;

    cma_probe(c);
    for (int rounds = 0; rounds < 64 && moved && c->failed == FX_OK; rounds++) {
        moved = push_sends(c);
        moved |= pull_recvs(c);
    }
    cma_complete(c);
}

/* ------------------------------------------------------------------ requests */

static struct fx_tp_req *req_get(struct fx_tp_conn *c)
{
    struct fx_tp *tp    = c->tp;
    struct fx_tp_req *r = tp->free_reqs;

    if (r != NULL) {
        tp->free_reqs = r->next;
    } else {
        r = calloc(1, sizeof(*r));
        if (r == NULL) {
            return NULL;
        }
        r->all_next  = tp->all_reqs;
        tp->all_reqs = r;
    }
    r->next   = NULL;
    r->conn   = c;
    r->status = FX_INPROGRESS;
    r->done   = 0;
    r->cma    = false;
    return r;
}

static void req_put(struct fx_tp_req *r)
{
    struct fx_tp *tp = r->conn->tp;

    r->next       = tp->free_reqs;
    tp->free_reqs = r;
}

static fx_status post(struct fx_tp_conn *c, bool send, const void *hdr, size_t hdrlen,
                      const void *buf, size_t len, struct fx_tp_req **out)
{
    struct req_queue *q = send ? &c->sendq : &c->recvq;
    struct fx_tp_req *r;

    if (c->failed != FX_OK) {
        return c->failed;
    }
    if (hdrlen > FX_TP_HDR_MAX) {
        return FX_ERR_INVALID_ARG;
    }
    r = req_get(c);
    if (r == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    r->send     = send;
    r->hdrlen   = hdrlen;
    r->len      = len;
    r->buf      = (uint8_t *)(uintptr_t)buf;
    r->user_hdr = send ? NULL : (uint8_t *)hdr;
    if (send) {
        put32(r->frame, SHM_FRAME);
        put32(r->frame + 4, (uint32_t)hdrlen);
        put64(r->frame + 8, len);
        if (hdrlen > 0) {
            memcpy(r->hdr, hdr, hdrlen);
        }
    }
    queue_push(q, r);
    conn_io(c); /* latency: move it now */
    *out = r;
    return FX_OK;
}

static fx_status shm_isend(struct fx_tp_conn *c, const void *hdr, size_t hdrlen, const void *buf,
                           size_t len, struct fx_tp_req **req)
{
    return post(c, true, hdr, hdrlen, buf, len, req);
}

static fx_status shm_irecv(struct fx_tp_conn *c, void *hdr, size_t hdrlen, void *buf, size_t len,
                           struct fx_tp_req **req)
{
    return post(c, false, hdr, hdrlen, buf, len, req);
}

/* Reports what progress() and the posts moved: the core polls progress() before it tests, so a
 * test moves nothing itself (one pass over the rings per round, not one per request). */
static fx_status shm_test(struct fx_tp_req *r)
{
    fx_status status = r->status;

    if (status == FX_INPROGRESS && r->conn->failed != FX_OK) {
        status = r->conn->failed;
    }
    if (status == FX_INPROGRESS) {
        return FX_INPROGRESS;
    }
    conn_wake(r->conn);
    req_put(r);
    return status;
}

/* ------------------------------------------------------------------ instance */

static fx_status shm_init(const struct fx_tp_config *cfg, struct fx_tp **out)
{
    struct fx_tp *tp = calloc(1, sizeof(*tp));

    if (tp == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    tp->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    tp->epfd       = epoll_create1(EPOLL_CLOEXEC);
    if (tp->epfd < 0) {
        fx_warn(FX_SUB_NET, "epoll_create1 failed: %s", strerror(errno));
        free(tp);
        return FX_ERR_SYSTEM;
    }
    *out = tp;
    return FX_OK;
}

static void shm_fini(struct fx_tp *tp)
{
    while (tp->all_reqs != NULL) {
        struct fx_tp_req *r = tp->all_reqs;

        tp->all_reqs = r->all_next;
        free(r);
    }
    close(tp->epfd);
    free(tp);
}

static int shm_wait_fd(struct fx_tp *tp)
{
    return tp->epfd;
}

static void peer_gone(struct fx_tp_conn *c)
{
    conn_fail(c, FX_ERR_PEER_FAILED, "%s died or closed its connection", c->peer);
}

/*
 * The peer's socket hung up. A peer that finished its work may close right after publishing its
 * last messages (a send completes once it is in the ring), so what it published is still read
 * (the segment stays mapped); only requests that can no longer complete fail: a send (nobody
 * reads it), or a receive with nothing left in the ring. A peer killed mid-message leaves a
 * partial message, which fails the same way once consumed.
 */
static void peer_hung_up(struct fx_tp_conn *c)
{
    if (!c->peer_closed) {
        c->peer_closed = true;
        epoll_ctl(c->tp->epfd, EPOLL_CTL_DEL, c->sock, NULL); /* level-triggered: once is enough */
    }
}

static void check_closed(struct fx_tp_conn *c)
{
    bool ring_empty = !slot_ready(&c->in);

    if (c->sendq.head != NULL || c->cmaq.head != NULL || (c->recvq.head != NULL && ring_empty)) {
        peer_gone(c);
    }
}

/*
 * Moves every connection. The epoll set (wake-ups, and hang-ups of dead peers) is read when
 * the caller slept or at most every millisecond: while both sides poll, the data path makes no
 * system call. The clock itself is read every POLL_CLOCK_EVERY calls (a spinning waiter calls
 * every few hundred nanoseconds; a clock read costs tens of them in a virtual machine).
 */
static fx_status shm_progress(struct fx_tp *tp)
{
    struct epoll_event evs[32];
    int n;

    if (tp->armed ||
        (++tp->polls % POLL_CLOCK_EVERY == 0 && fx_now_us() - tp->last_poll_us >= 1000)) {
        tp->last_poll_us = fx_now_us();
        do {
            n = epoll_wait(tp->epfd, evs, 32, 0);
            for (int i = 0; i < n; i++) {
                struct epoll_tag *tag = evs[i].data.ptr;

                if (tag->kind == OBJ_CONN_EVENT) {
                    uint64_t v;

                    if (read(((struct fx_tp_conn *)tag->obj)->my_efd, &v, sizeof(v)) < 0) {
                        /* drained by an earlier round */
                    }
                } else if (tag->kind == OBJ_CONN_SOCK &&
                           (evs[i].events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR | EPOLLIN))) {
                    peer_hung_up(tag->obj); /* nothing is ever sent after set-up */
                }
            }
        } while (n == 32);
    }
    for (struct fx_tp_conn *c = tp->conns; c != NULL; c = c->next) {
        if (tp->armed && c->failed == FX_OK) {
            disarm(c);
        }
        if (c->failed == FX_OK) {
            conn_io(c);
            conn_wake(c);
        }
        if (c->failed == FX_OK && c->peer_closed) {
            check_closed(c);
        }
    }
    tp->armed = false;
    return FX_OK;
}

static bool shm_prepare_wait(struct fx_tp *tp)
{
    bool ready = false;

    for (struct fx_tp_conn *c = tp->conns; c != NULL; c = c->next) {
        if (c->failed == FX_OK) {
            conn_wake(c); /* nobody may sleep on what we published */
        }
        if (c->failed == FX_OK &&
            (c->sendq.head != NULL || c->recvq.head != NULL || c->cmaq.head != NULL)) {
            ready |= arm_sleep(c);
        }
    }
    tp->armed = true;
    return ready;
}

/* ------------------------------------------------------------------ set-up */

static void fcntl_nonblock(int fd);

/* Published address: u32 magic, u8 name length, the abstract socket name (without the NUL). */
static void addr_make(const char *name, size_t len, struct fx_tp_addr *a)
{
    memset(a, 0, sizeof(*a));
    put32(a->data, SHM_MAGIC);
    a->data[4] = (uint8_t)len;
    memcpy(a->data + 5, name, len);
    a->len = (uint32_t)(5 + len);
}

static int addr_parse(const struct fx_tp_addr *a, struct sockaddr_un *sun, socklen_t *slen)
{
    size_t len = a->len >= 5 ? a->data[4] : 0;

    if (a->len < 5 || get32(a->data) != SHM_MAGIC || len == 0 || len > SHM_NAME_LEN ||
        a->len != 5 + len) {
        return -1;
    }
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path + 1, a->data + 5, len); /* abstract: leading NUL */
    *slen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    return 0;
}

static fx_status epoll_add(struct fx_tp *tp, int fd, uint32_t events, struct epoll_tag *tag)
{
    struct epoll_event ev = {.events = events, .data.ptr = tag};

    if (epoll_ctl(tp->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        fx_warn(FX_SUB_NET, "shm: epoll_ctl failed: %s", strerror(errno));
        return FX_ERR_SYSTEM;
    }
    return FX_OK;
}

static fx_status shm_listen(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **out)
{
    struct fx_tp_listener *l = calloc(1, sizeof(*l));
    struct sockaddr_un sun;
    char name[SHM_NAME_LEN];
    uint64_t nonce;
    int len;

    if (l == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    if (getentropy(&nonce, sizeof(nonce)) != 0) {
        free(l);
        return FX_ERR_SYSTEM;
    }
    len = snprintf(name, sizeof(name), "libfabricx-shm-%d-%016llx", (int)getpid(),
                   (unsigned long long)nonce);
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path + 1, name, (size_t)len);
    l->tp = tp;
    l->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0 ||
        bind(l->fd, (struct sockaddr *)&sun,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len)) != 0 ||
        listen(l->fd, 128) != 0) {
        fx_warn(FX_SUB_NET, "shm: cannot listen: %s", strerror(errno));
        if (l->fd >= 0) {
            close(l->fd);
        }
        free(l);
        return FX_ERR_SYSTEM;
    }
    addr_make(name, (size_t)len, addr);
    fx_info(FX_SUB_NET, "shm: listening on @%s", name);
    *out = l;
    return FX_OK;
}

static void shm_listen_close(struct fx_tp_listener *l)
{
    for (int i = 0; i < l->npend; i++) {
        close(l->pend[i].fd);
    }
    close(l->fd);
    free(l);
}

static void conn_free(struct fx_tp_conn *c)
{
    if (c->seg != NULL) {
        munmap(c->seg, c->seg_len);
    }
    if (c->sock >= 0) {
        close(c->sock);
    }
    if (c->my_efd >= 0) {
        close(c->my_efd);
    }
    if (c->peer_efd >= 0) {
        close(c->peer_efd);
    }
    free(c);
}

static struct fx_tp_conn *conn_new(struct fx_tp *tp)
{
    struct fx_tp_conn *c = calloc(1, sizeof(*c));

    if (c != NULL) {
        c->tp       = tp;
        c->sock     = -1;
        c->my_efd   = -1;
        c->peer_efd = -1;
    }
    return c;
}

/* Registers an established connection: liveness socket and wake-up eventfd in the epoll set. */
static fx_status conn_arm(struct fx_tp_conn *c)
{
    struct ucred cred;
    socklen_t cl = sizeof(cred);

    if (getsockopt(c->sock, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
        snprintf(c->peer, sizeof(c->peer), "pid %d (shm)", (int)cred.pid);
    } else {
        snprintf(c->peer, sizeof(c->peer), "a local process (shm)");
    }
    c->sock_tag = (struct epoll_tag){OBJ_CONN_SOCK, c};
    c->efd_tag  = (struct epoll_tag){OBJ_CONN_EVENT, c};
    if (epoll_add(c->tp, c->sock, EPOLLIN | EPOLLRDHUP, &c->sock_tag) != FX_OK ||
        epoll_add(c->tp, c->my_efd, EPOLLIN, &c->efd_tag) != FX_OK) {
        return FX_ERR_SYSTEM;
    }
    c->next      = c->tp->conns;
    c->tp->conns = c;
    return FX_OK;
}

/* Creates the segment (touched now: no first touch on the data path) and the eventfds. */
static fx_status make_segment(struct fx_tp_conn *c, int *memfd, int *efd_peer)
{
    c->seg_len = 2 * ring_bytes();
    *memfd     = memfd_create("libfabricx-shm", MFD_CLOEXEC);
    *efd_peer  = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    c->my_efd  = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (*memfd < 0 || *efd_peer < 0 || c->my_efd < 0 || ftruncate(*memfd, (off_t)c->seg_len) != 0) {
        snprintf(c->error, sizeof(c->error), "cannot create a shared segment: %s", strerror(errno));
        return FX_ERR_SYSTEM;
    }
    c->seg = mmap(NULL, c->seg_len, PROT_READ | PROT_WRITE, MAP_SHARED, *memfd, 0);
    if (c->seg == MAP_FAILED) {
        c->seg = NULL;
        snprintf(c->error, sizeof(c->error), "cannot map a %zu-byte segment: %s", c->seg_len,
                 strerror(errno));
        return FX_ERR_SYSTEM;
    }
    memset(c->seg, 0, c->seg_len);
    return FX_OK;
}

/* Sends the set-up packet with the memfd and both eventfds. */
static fx_status send_setup(struct fx_tp_conn *c, int memfd, int efd_peer, const void *hello,
                            size_t hello_len)
{
    uint8_t pkt[SHM_HELLO_HDR + FX_TP_HELLO_MAX];
    int fds[3] = {memfd, efd_peer, c->my_efd};
    union {
        char buf[CMSG_SPACE(sizeof(fds))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {pkt, SHM_HELLO_HDR + hello_len};
    struct msghdr msg;
    struct cmsghdr *cm;

    put32(pkt, SHM_MAGIC);
    pkt[4] = SHM_VERSION;
    pkt[5] = 0;
    pkt[6] = (uint8_t)hello_len;
    pkt[7] = 0;
    put32(pkt + 8, SHM_NSLOTS);
    put32(pkt + 12, SHM_SLOT_BYTES);
    memcpy(pkt + SHM_HELLO_HDR, hello, hello_len);
    memset(&msg, 0, sizeof(msg));
    memset(&ctl, 0, sizeof(ctl));
    msg.msg_iov        = &iov;
    msg.msg_iovlen     = 1;
    msg.msg_control    = ctl.buf;
    msg.msg_controllen = sizeof(ctl.buf);
    cm                 = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level     = SOL_SOCKET;
    cm->cmsg_type      = SCM_RIGHTS;
    cm->cmsg_len       = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cm), fds, sizeof(fds));
    if (sendmsg(c->sock, &msg, MSG_NOSIGNAL) < 0) {
        return errno == EAGAIN ? FX_INPROGRESS : FX_ERR_CONNECTION;
    }
    return FX_OK;
}

static fx_status shm_connect(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                             size_t hello_len, struct fx_tp_conn **conn)
{
    struct fx_tp_conn *c = *conn;
    struct sockaddr_un sun;
    socklen_t slen;
    int memfd    = -1;
    int efd_peer = -1;
    fx_status status;

    if (hello_len > FX_TP_HELLO_MAX || addr_parse(addr, &sun, &slen) != 0) {
        return FX_ERR_INVALID_ARG;
    }
    if (c != NULL) {
        return FX_OK; /* set up in one go below; never left in progress */
    }
    c = conn_new(tp);
    if (c == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    snprintf(c->peer, sizeof(c->peer), "@%.*s", (int)addr->data[4], (const char *)addr->data + 5);
    c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->sock < 0 || connect(c->sock, (struct sockaddr *)&sun, slen) != 0) {
        fx_warn(FX_SUB_NET, "shm: connect to %s: %s", c->peer, strerror(errno));
        conn_free(c);
        return FX_ERR_CONNECTION;
    }
    status = make_segment(c, &memfd, &efd_peer);
    if (status == FX_OK) {
        c->peer_efd = efd_peer;
        efd_peer    = -1;
        status      = send_setup(c, memfd, c->peer_efd, hello, hello_len);
        if (status == FX_INPROGRESS) {
            status = FX_ERR_CONNECTION; /* a blocking SEQPACKET send does not stay pending */
        }
    }
    if (memfd >= 0) {
        close(memfd); /* the mapping keeps the memory; the peer got its own descriptor */
    }
    if (efd_peer >= 0) {
        close(efd_peer);
    }
    if (status == FX_OK) {
        rings_attach(c, true);
        fcntl_nonblock(c->sock);
        status = conn_arm(c);
    }
    if (status != FX_OK) {
        fx_warn(FX_SUB_NET, "shm: connection to %s failed: %s", c->peer,
                c->error[0] ? c->error : strerror(errno));
        conn_free(c);
        return status == FX_ERR_SYSTEM ? FX_ERR_SYSTEM : FX_ERR_CONNECTION;
    }
    c->connected = true;
    *conn        = c;
    return FX_OK;
}

static void fcntl_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl >= 0) {
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
}

static void pend_drop(struct fx_tp_listener *l, int i, const char *why)
{
    fx_warn(FX_SUB_NET, "shm: dropped a local connection: %s", why);
    close(l->pend[i].fd);
    l->pend[i] = l->pend[--l->npend];
}

static void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
}

/* Reads one pending socket's set-up packet. 1: a connection is ready in *out; 0: not yet;
 * -1: dropped. */
static int pend_read(struct fx_tp_listener *l, int i, struct fx_tp_conn **out, void *hello,
                     size_t *hello_len)
{
    uint8_t pkt[SHM_HELLO_HDR + FX_TP_HELLO_MAX];
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {pkt, sizeof(pkt)};
    struct msghdr msg;
    struct cmsghdr *cm;
    int fds[3] = {-1, -1, -1};
    struct fx_tp_conn *c;
    ssize_t n;
    size_t hlen;

    memset(&msg, 0, sizeof(msg));
    msg.msg_iov        = &iov;
    msg.msg_iovlen     = 1;
    msg.msg_control    = ctl.buf;
    msg.msg_controllen = sizeof(ctl.buf);
    n                  = recvmsg(l->pend[i].fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        if (fx_now_ms() > l->pend[i].deadline) {
            pend_drop(l, i, "no set-up packet in time");
            return -1;
        }
        return 0;
    }
    cm = CMSG_FIRSTHDR(&msg);
    if (cm != NULL && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
        cm->cmsg_len == CMSG_LEN(sizeof(fds))) {
        memcpy(fds, CMSG_DATA(cm), sizeof(fds));
    }
    hlen = n >= SHM_HELLO_HDR ? pkt[6] : 0;
    if (n < SHM_HELLO_HDR || get32(pkt) != SHM_MAGIC || pkt[4] != SHM_VERSION ||
        get32(pkt + 8) != SHM_NSLOTS || get32(pkt + 12) != SHM_SLOT_BYTES ||
        (size_t)n != SHM_HELLO_HDR + hlen || fds[2] < 0 || (msg.msg_flags & MSG_CTRUNC)) {
        close_fds(fds, 3);
        pend_drop(l, i,
                  n <= 0 ? "closed before its set-up packet"
                         : "not a libfabricx shm set-up packet (or another version)");
        return -1;
    }
    c = conn_new(l->tp);
    if (c == NULL) {
        close_fds(fds, 3);
        pend_drop(l, i, "out of memory");
        return -1;
    }
    c->seg_len  = 2 * ring_bytes();
    c->seg      = mmap(NULL, c->seg_len, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    c->my_efd   = fds[1];
    c->peer_efd = fds[2];
    close(fds[0]);
    c->sock    = l->pend[i].fd;
    l->pend[i] = l->pend[--l->npend];
    if (c->seg == MAP_FAILED) {
        c->seg = NULL;
        fx_warn(FX_SUB_NET, "shm: cannot map a peer's segment: %s", strerror(errno));
        conn_free(c);
        return -1;
    }
    rings_attach(c, false);
    if (conn_arm(c) != FX_OK) {
        conn_free(c);
        return -1;
    }
    memcpy(hello, pkt + SHM_HELLO_HDR, hlen);
    *hello_len = hlen;
    *out       = c;
    return 1;
}

static fx_status shm_accept(struct fx_tp_listener *l, struct fx_tp_conn **conn, void *hello,
                            size_t *hello_len)
{
    for (int tries = 0; tries < 16 && l->npend < SHM_PENDING; tries++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            break;
        }
        l->pend[l->npend].fd = fd;
        l->pend[l->npend].deadline =
            fx_now_ms() + (l->tp->timeout_ms < 10000 ? l->tp->timeout_ms : 10000);
        l->npend++;
    }
    for (int i = l->npend - 1; i >= 0; i--) {
        if (pend_read(l, i, conn, hello, hello_len) == 1) {
            return FX_OK;
        }
    }
    return FX_INPROGRESS;
}

static void shm_close(struct fx_tp_conn *c)
{
    struct fx_tp_conn **pp = &c->tp->conns;

    while (*pp != NULL && *pp != c) {
        pp = &(*pp)->next;
    }
    if (*pp == c) {
        *pp = c->next;
    }
    conn_wake(c); /* what we published last is read even if the peer sleeps */
    /* Queued requests are abandoned with the connection; fini frees them. */
    conn_free(c); /* closing the socket tells the peer */
}

static void shm_conn_error(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->failed != FX_OK ? c->error : "no error");
}

static void shm_conn_peer(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->peer);
}

const struct fx_transport_ops fx_shm_ops = {
    .name         = "shm",
    .caps         = FX_TP_CAP_HOST_MEM | FX_TP_CAP_LOCAL_ONLY,
    .init         = shm_init,
    .fini         = shm_fini,
    .progress     = shm_progress,
    .wait_fd      = shm_wait_fd,
    .prepare_wait = shm_prepare_wait,
    .listen       = shm_listen,
    .listen_close = shm_listen_close,
    .connect      = shm_connect,
    .accept       = shm_accept,
    .close        = shm_close,
    .isend        = shm_isend,
    .irecv        = shm_irecv,
    .test         = shm_test,
    .conn_error   = shm_conn_error,
    .conn_peer    = shm_conn_peer,
};
