/*
 * The transport ops table: what the executor needs from a network, and nothing more.
 *
 * A transport moves whole messages over connections. A connection is used in one direction only
 * by the core (the side that called connect sends, the side that accepted receives), so a
 * transport may optimise for that, but must work both ways. Messages on one connection complete
 * in the order they were posted and are matched in that order with the peer's receives.
 *
 * Every message may carry a small opaque header (hdrlen <= FX_TP_HDR_MAX bytes), delivered to
 * the receiver whole, before or with the payload. The receiver posts the header and payload
 * lengths it expects; a message whose lengths differ completes the receive with
 * FX_ERR_MISMATCH, the sender's header copied out when it arrived (so the caller can say what
 * differs), never writes past the posted buffers, and leaves the connection failed: its other
 * requests (earlier ones included, when the mismatch was seen first) complete with
 * FX_ERR_CONNECTION, never with FX_ERR_MISMATCH.
 *
 * Threading: a transport instance (struct fx_tp) and all its objects are used by one thread at a
 * time; the core serialises calls with its own lock. No call blocks, except where a slot's
 * comment says so.
 *
 * Layering: transports include only this header, fabricx.h, libfabricx/fx_log.h,
 * libfabricx/fx_sock.h (clock and address formatting) and transports/rcache.h (the shared
 * memory registration cache); the verbs transport also uses transports/tcp/tcp_iface.h (the
 * FX_SOCKET_IFNAME rules, for an HCA without a netdev in sysfs). The core hands them
 * configuration in struct fx_tp_config; they never read FX_* variables themselves.
 */
#ifndef FX_TRANSPORT_H
#define FX_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

#define FX_TP_HDR_MAX   64
#define FX_TP_ADDR_MAX  512 /* UCX worker addresses: 145-215 bytes on one NIC (ucx.c) */
#define FX_TP_HELLO_MAX 128

/* Capability bits, set to match the slots a transport fills. */
#define FX_TP_CAP_HOST_MEM   (1u << 0) /* sends from / receives into any host memory */
#define FX_TP_CAP_LOCAL_ONLY (1u << 1) /* reaches only processes of the same host */

/* Configuration handed to init by the core (from FX_* variables and the bootstrap). */
struct fx_tp_config {
    const char *ifname;   /* FX_SOCKET_IFNAME: prefixes, "^" to exclude, "=" exact, or a CIDR */
    int nsocks;           /* sockets per connection; 0: the transport's default */
    int timeout_ms;       /* bound on connection set-up handshakes */
    size_t min_stripe;    /* payloads below 2 * min_stripe travel on one socket; 0: default */
    bool zerocopy;        /* FX_TCP_ZEROCOPY: MSG_ZEROCOPY for large sends */
    size_t reg_cache_max; /* FX_REG_CACHE_MAX: bound of a registration cache (rcache.h); 0: none */
    /* RDMA verbs (docs/verbs.md) */
    const char *ib_hca;  /* FX_IB_HCA: "mlx5_0:1,mlx5_1:1", first usable wins; NULL: ib_near */
    const char *ib_near; /* the NIC nearest to this process (topology), or NULL */
    int ib_gid_index;    /* FX_IB_GID_INDEX; -1: the first RoCE v2 IPv4-mapped GID (IB: 0) */
    int ib_tc;           /* FX_IB_TC: traffic class / IP TOS; -1: not set */
    int ib_sl;           /* FX_IB_SL: InfiniBand service level */
    int ib_qps;          /* FX_IB_QPS_PER_CONN; 0: the transport's default */
};

/* An address published through the bootstrap table: opaque bytes of `len`. */
struct fx_tp_addr {
    uint32_t len;
    uint8_t data[FX_TP_ADDR_MAX];
};

/* What a connection moved, seen by the transport at the wire (conn_stats). */
struct fx_tp_conn_stats {
    uint64_t bytes_acked; /* sent: payload and framing bytes the peer acknowledged */
    uint64_t busy_ns;     /* sent: time with data queued for or in flight on the wire */
    uint64_t recv_bytes;  /* received, in messages of 64 KiB or more: their payload bytes */
    uint64_t recv_ns;     /* ... and the time from the first byte of each to its last
                           * (for one still arriving, to the reading) */
};

struct fx_tp;          /* one transport instance; the core makes one per communicator */
struct fx_tp_listener; /* a passive endpoint whose address peers connect to */
struct fx_tp_conn;     /* one logical connection (possibly several sockets) */
struct fx_tp_req;      /* one posted send or receive */

struct fx_transport_ops {
    const char *name;
    unsigned caps;

    /* Creates an instance. Blocking is allowed (interface discovery). */
    fx_status (*init)(const struct fx_tp_config *cfg, struct fx_tp **tp);
    /* Frees the instance; every listener and connection must have been closed. */
    void (*fini)(struct fx_tp *tp);

    /*
     * Makes progress on every connection: moves bytes, completes requests, notices dead peers
     * and fails their requests. Never blocks. Returns FX_OK, or an error only for a failure of
     * the whole instance (a failed connection fails its own requests instead).
     */
    fx_status (*progress)(struct fx_tp *tp);
    /*
     * A file descriptor that polls readable when progress() may have work: data arrived, a
     * socket became writable, a peer closed. The caller polls it (it may be an epoll fd) and
     * then calls progress(). Owned by the transport.
     */
    int (*wait_fd)(struct fx_tp *tp);
    /*
     * Optional (NULL: nothing to do). Called right before the caller sleeps on wait_fd(): the
     * transport makes sure that whatever lets its requests move from now on makes wait_fd()
     * readable. Returns true when something can move already (then the caller should not
     * sleep). Lets a transport that is polled without system calls (shared memory) ask its
     * peers for wake-ups only while it really sleeps.
     */
    bool (*prepare_wait)(struct fx_tp *tp);

    /*
     * Opens a listener; *addr receives the address to publish (it may list several interface
     * addresses; connect tries them in order).
     */
    fx_status (*listen)(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **lst);
    void (*listen_close)(struct fx_tp_listener *lst);

    /*
     * Starts a connection to a published address. The hello bytes (at most FX_TP_HELLO_MAX) are
     * delivered to the accepting side by its accept(). Returns FX_OK with *conn set once the
     * connection (all its sockets) is established, or FX_INPROGRESS: call again with the same
     * arguments and *conn as returned; *conn is then an in-progress handle owned by the caller
     * (close() it to give up). Errors: FX_ERR_CONNECTION (refused, unreachable).
     */
    fx_status (*connect)(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                         size_t hello_len, struct fx_tp_conn **conn);
    /*
     * Returns FX_OK with a new, fully established connection and its hello bytes, or
     * FX_INPROGRESS while none is complete. Garbage, half-open and foreign connections are
     * dropped inside (and logged) without disturbing the listener; they never reach the caller.
     */
    fx_status (*accept)(struct fx_tp_listener *lst, struct fx_tp_conn **conn, void *hello,
                        size_t *hello_len);
    /* Closes a connection; its pending requests are freed and must not be tested again. */
    void (*close)(struct fx_tp_conn *conn);

    /*
     * Posts a send of hdr[0..hdrlen) followed by buf[0..len). Never blocks. The caller keeps
     * both buffers unchanged until the request completes (hdr may be copied at post time).
     * len may be 0. A send may complete only once the peer has posted the matching receive
     * (shared memory's single copy waits for the peer to read it), so a plan must never make
     * a receive from a peer wait for a send to that peer.
     */
    fx_status (*isend)(struct fx_tp_conn *conn, const void *hdr, size_t hdrlen, const void *buf,
                       size_t len, struct fx_tp_req **req);
    /* Posts a receive of exactly hdrlen header bytes and len payload bytes. Never blocks. */
    fx_status (*irecv)(struct fx_tp_conn *conn, void *hdr, size_t hdrlen, void *buf, size_t len,
                       struct fx_tp_req **req);
    /*
     * Never blocks. Returns FX_INPROGRESS while the request runs; otherwise the request is
     * complete and freed and the return value is its status (FX_OK, FX_ERR_MISMATCH,
     * FX_ERR_PEER_FAILED when the peer closed or reset, FX_ERR_CONNECTION).
     */
    fx_status (*test)(struct fx_tp_req *req);

    /* Describes the connection's failure (peer address and cause) for an error message. */
    void (*conn_error)(struct fx_tp_conn *conn, char *buf, size_t len);
    /* Writes the connection's peer address as text ("10.0.0.2:41234"). */
    void (*conn_peer)(struct fx_tp_conn *conn, char *buf, size_t len);
    /*
     * Optional (NULL: the transport cannot tell). Cumulative counters of the connection: what
     * this side received (the arrival rate of large messages, which the receiver reads as they
     * come, so a receiver that holds data back does not slow its measure) and what it sent,
     * seen at the wire (TCP: the kernel's acknowledged bytes and its busy and
     * send-buffer-limited times, not the time the receiver's window held it back; bytes summed
     * over the sockets, the busy time the longest of theirs, as they carry stripes of the same
     * messages at once).
     * Returns false when they cannot be read now. Never blocks; called about once a second.
     */
    bool (*conn_stats)(struct fx_tp_conn *conn, struct fx_tp_conn_stats *st);
};

/* Transports in preference order; NULL-terminated. */
extern const struct fx_transport_ops *const fx_transports[];

/* Finds a transport by name; NULL if not built. */
const struct fx_transport_ops *fx_transport_find(const char *name);

#endif /* FX_TRANSPORT_H */
