/*
 * The verbs transport's internals, shared by verbs.c (instance, device choice, data path),
 * verbs_conn.c (rdma_cm set-up, the QPs' states, peer loss, close) and verbs_gid.c (the source
 * GID). The design is described at the head of verbs.c.
 */
#ifndef FX_VERBS_INT_H
#define FX_VERBS_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "transports/rcache.h"
#include "transports/tp_bytes.h"
#include "transports/transport.h"

#define VB_MAGIC      0x56425846u /* "FXBV" */
#define VB_VERSION    1
#define VB_MAX_QPS    8
#define VB_MAX_ADDRS  4
#define VB_SLOTS      32   /* eager ring slots per direction of a connection */
#define VB_FRAME      32   /* a slot's framing before the header */
#define VB_EAGER_MAX  8192 /* header + payload that travel eagerly */
#define VB_SLOT_SIZE  (VB_FRAME + VB_EAGER_MAX)
#define VB_CSLOTS     16 /* control slots (CTS) per direction, consumed on arrival */
#define VB_CSLOT_SIZE VB_FRAME
#define VB_NSLOTS     (VB_SLOTS + VB_CSLOTS)
/* After the slots: the word credit writes land on (its contents are unused: the immediate
 * value carries the credits; a 4-byte write, so that its rkey is checked like any other). */
#define VB_CREDIT_OFF ((size_t)VB_SLOTS * VB_SLOT_SIZE + (size_t)VB_CSLOTS * VB_CSLOT_SIZE)
#define VB_RING_LEN   (VB_CREDIT_OFF + 8)
#define VB_SQ_DEPTH   (2 * VB_NSLOTS + 16)
#define VB_RQ_DEPTH   (4 * VB_SLOTS)
#define VB_WR_MAX     (1u << 30)   /* bytes of one RDMA write */
#define VB_SPLIT_MIN  (256u << 10) /* parts of a large message are at least this long */
#define VB_POLL_BATCH 32
#define VB_CLOSE_MS   200 /* close: how long the disconnect may take */
#define VB_PRIV_REQ   40  /* connect private data (RC REQ: at most 56 bytes) */
#define VB_PRIV_REP   32  /* accept private data */
#define VB_ADDR_ENTRY 20  /* family(1) pad(1) port(2) address(16) */
#define VB_ADDR_HDR   8   /* magic(4) count(4) */
#define VB_REJ_LEN    48

/* Immediate data: kind in the top 4 bits, a value in the low 28. */
enum { IMM_SLOT = 1, IMM_CREDIT, IMM_DATA };
#define IMM(kind, v)  ((uint32_t)(kind) << 28 | ((uint32_t)(v)&0x0fffffffu))
#define IMM_KIND(imm) ((imm) >> 28)
#define IMM_VAL(imm)  ((imm)&0x0fffffffu)

/* What a ring slot carries. */
enum { SLOT_EAGER = 1, SLOT_RTS, SLOT_CTS, SLOT_HELLO, SLOT_NAK };

/* Work request ids: kind in the top byte, the rest an index or an id. */
enum { WR_SLOT = 1, WR_CREDIT, WR_DATA, WR_RECV };
#define WRID(kind, qp, v) ((uint64_t)(kind) << 56 | (uint64_t)(qp) << 48 | (uint64_t)(v))
#define WRID_KIND(id)     ((unsigned)((id) >> 56))
#define WRID_QP(id)       ((unsigned)((id) >> 48) & 0xffu)
#define WRID_VAL(id)      ((id)&0xffffffffffffu)

/* A registration of user memory held by one operation (vb_reg / vb_unreg): a held entry of
 * the device's registration cache, or an MR of its own. */
struct vb_reg {
    struct ibv_mr *mr;
    struct fx_rcache *rc; /* the cache ent belongs to; NULL: mr is the operation's own */
    struct fx_rcache_entry *ent;
};

/* One device context the rdma_cm ids of this instance landed on: its PD and channel. */
struct vb_dev {
    struct vb_dev *next;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *chan;
    struct fx_rcache *rc; /* user buffers' registrations (transports/rcache.h) */
};

enum req_state {
    RQ_QUEUED,   /* send: not started; receive: no message matched */
    RQ_WAIT_CTS, /* send: RTS out, waiting for the clear-to-send */
    RQ_WRITING,  /* send: writes posted; receive: CTS out, waiting for the data */
    RQ_DONE,
};

struct fx_tp_req {
    struct fx_tp_req *next;  /* in its queue, then in the free list */
    struct fx_tp_req *dprev; /* done, not tested yet: in its connection's done list */
    struct fx_tp_req *dnext;
    struct fx_tp_conn *conn;
    bool send;
    bool finished; /* left its queue: test() returns the status */
    enum req_state state;
    fx_status status; /* FX_INPROGRESS until the request is done */
    uint32_t id;      /* send: its message number (RTS/CTS/data carry it) */
    uint8_t hdr[FX_TP_HDR_MAX];
    void *user_hdr;
    size_t hdrlen;
    uint8_t *buf;
    size_t len;
    struct vb_reg reg;
    bool registered;
    int slot;         /* eager or RTS send: the staging slot it occupies; -1 none */
    unsigned pending; /* writes (send) or data arrivals (receive) still to come */
    unsigned nextpart;
    uint64_t raddr; /* send: the receiver's buffer from the CTS */
    uint32_t rkey;
    int64_t start_ns;
};

struct req_queue {
    struct fx_tp_req *head;
    struct fx_tp_req *tail;
};

struct vb_qp {
    struct rdma_cm_id *id;
    struct ibv_qp *qp; /* our own (ibv_create_qp), passed to rdma_cm as qp_num; NULL: none yet */
    struct fx_tp_conn *conn;
    struct vb_dev *dev;
    unsigned index;
    bool established;
    unsigned sq_used; /* posted send WRs not completed */
    unsigned sq_max;
    unsigned max_inline;
};

struct fx_tp_conn {
    struct fx_tp *tp;
    struct fx_tp_conn *next;
    struct fx_tp_listener *lst; /* accepting side: its listener until handed up */
    bool acceptor;
    uint64_t conn_id; /* the connecting side's id: groups the QPs of one connection */
    unsigned nqp;
    struct vb_qp qp[VB_MAX_QPS];
    unsigned nestablished;
    struct vb_dev *dev;
    struct ibv_cq *cq;
    unsigned cq_size;
    /* connect */
    int addr_index;
    struct fx_tp_addr target;
    int64_t deadline;
    uint8_t hello[FX_TP_HELLO_MAX];
    size_t hello_len;
    bool hello_sent;
    bool hello_seen; /* accepting side */
    bool ready;      /* handed to the caller (connect returned FX_OK / accept returned it) */
    /* our ring (the peer writes into it) and the staging slots of what we write */
    uint8_t *ring;
    struct ibv_mr *ring_mr;
    uint8_t *stage;
    struct ibv_mr *stage_mr;
    bool stage_busy[VB_NSLOTS];
    struct fx_tp_req *stage_req[VB_NSLOTS]; /* the send a staging slot carries */
    bool slot_full[VB_SLOTS];               /* our ring: arrived, not consumed */
    uint32_t arrivals;                      /* ring slots arrived, in order */
    uint32_t matched;                       /* arrivals before this one are consumed */
    uint32_t reported;                      /* arrivals returned as credits */
    unsigned credits_owed;                  /* slots freed, not reported to the peer yet */
    unsigned ccredits_owed;                 /* control slots likewise */
    /* the peer's ring */
    uint64_t peer_ring;
    uint32_t peer_rkey;
    unsigned peer_slot;     /* next slot we write */
    unsigned peer_cslot;    /* next control slot we write */
    unsigned credits;       /* peer slots free for us */
    unsigned ccredits;      /* peer control slots free for us */
    struct fx_tp_req *done; /* finished requests not tested yet */
    uint32_t next_send_id;
    uint32_t next_recv_id; /* the message number the next matched slot must carry */
    struct req_queue sendq;
    struct req_queue recvq;
    bool peer_gone; /* disconnected: what arrived is still received */
    fx_status failed;
    char error[256];
    char peer[96];
    uint64_t bytes_sent;
    uint64_t busy_ns;
    uint64_t recv_bytes;
    uint64_t recv_ns;
};

struct fx_tp_listener {
    struct fx_tp *tp;
    struct fx_tp_listener *next;
    int nids;
    struct rdma_cm_id *ids[VB_MAX_ADDRS];
};

struct fx_tp {
    struct rdma_event_channel *ec;
    int efd;
    int timeout_ms;
    unsigned nqp;
    int tos; /* -1: not set */
    int sl;
    size_t reg_cache_max; /* FX_REG_CACHE_MAX */
    char hca[64];         /* the chosen device ("" when none was found: rdma_cm chooses) */
    int port;
    uint8_t link_layer; /* of the chosen port */
    int gid_index;      /* FX_IB_GID_INDEX: the source GID of every QP; -1: rdma_cm's choice */
    int gid_used;       /* the GID index the QPs were last logged using; -1: none yet */
    bool gid_warned;    /* the forced GID was found not to be the bound address (warned once) */
    int nlocal;
    struct sockaddr_storage local[VB_MAX_ADDRS];
    struct vb_dev *devs;
    struct fx_tp_conn *conns; /* every connection, accepted ones not handed up included */
    struct fx_tp_listener *lsts;
    struct fx_tp_req *free_reqs;
};

/* ------------------------------------------------------------------ between the two files */

/* verbs.c */
void fx_vb_conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
fx_status fx_vb_conn_buffers(struct fx_tp_conn *c);
void fx_vb_conn_release(struct fx_tp_conn *c);
void fx_vb_post_recvs(struct vb_qp *q, unsigned n);
bool fx_vb_send_hello(struct fx_tp_conn *c);
int fx_vb_poll_conn(struct fx_tp_conn *c);
void fx_vb_conn_reqs_free(struct fx_tp_conn *c);
void fx_vb_peer_gone(struct fx_tp_conn *c);
struct vb_dev *fx_vb_dev(struct fx_tp *tp, struct ibv_context *ctx);

/* verbs_gid.c */
/* Checks FX_IB_GID_INDEX (want) against the chosen port's GID table, or finds the RoCE v2 GID
 * when it is -1; logs the GID and publishes its IPv4 address first. FX_ERR_INVALID_ARG, with a
 * warning naming device, port and index, for a forced index past the table, empty or of a type
 * the port cannot use. */
fx_status fx_vb_gid_choose(struct fx_tp *tp, struct ibv_context *ctx,
                           const struct ibv_port_attr *pa, int want);
/* Puts the forced source GID index into a QP's RTR attributes from rdma_cm. */
void fx_vb_gid_rtr(const struct fx_tp *tp, struct ibv_qp_attr *a);
/* QP q reached RTR with a: logs the GID the QPs use when it changes; warns once per instance
 * when a forced GID is not the address rdma_cm bound. */
void fx_vb_gid_used(struct fx_tp_conn *c, struct vb_qp *q, const struct ibv_qp_attr *a);

/* verbs_conn.c */
void fx_vb_cm_events(struct fx_tp *tp);
void fx_vb_qp_stop(struct vb_qp *q);
void fx_vb_conn_check(struct fx_tp_conn *c);
fx_status fx_vb_listen(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **out);
void fx_vb_listen_close(struct fx_tp_listener *l);
fx_status fx_vb_connect(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                        size_t hello_len, struct fx_tp_conn **conn);
fx_status fx_vb_accept(struct fx_tp_listener *l, struct fx_tp_conn **conn, void *hello,
                       size_t *hello_len);
void fx_vb_close(struct fx_tp_conn *c);
void fx_vb_conn_free(struct fx_tp_conn *c);

#endif /* FX_VERBS_INT_H */
