/* Data connections: the hello that authenticates them, the ring's at init, the others on
 * demand. */
#include "fx_conn.h"

#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "fx_log.h"
#include "fx_route.h"
#include "fx_sock.h"

#define HELLO_MAGIC 0x31485846u /* "FXH1" */
#define HELLO_LEN   (4 + 8 + 4 + 4 + FX_MAC_LEN)

void fx_conn_close_all(struct fx_comm *comm)
{
    for (int r = 0; r < comm->nranks; r++) {
        if (comm->connecting[r] != NULL) {
            fx_comm_peer_ops(comm, r)->close(comm->connecting[r]);
            comm->connecting[r] = NULL;
        }
        if (comm->recv_conns[r] == comm->send_conns[r]) {
            comm->recv_conns[r] = NULL; /* one duplex connection: closed once below */
        }
        if (comm->send_conns[r] != NULL) {
            fx_comm_peer_ops(comm, r)->close(comm->send_conns[r]);
            comm->send_conns[r] = NULL;
        }
        if (comm->recv_conns[r] != NULL) {
            fx_comm_peer_ops(comm, r)->close(comm->recv_conns[r]);
            comm->recv_conns[r] = NULL;
        }
    }
    comm->exec.running = false;
}

static void make_hello(const struct fx_comm *comm, int src, int dst, uint8_t *out)
{
    uint8_t ids[16];
    uint64_t id = comm->boot.info.comm_id;

    memcpy(out, &(uint32_t){HELLO_MAGIC}, 4);
    memcpy(out + 4, &id, 8);
    memcpy(out + 12, &src, 4);
    memcpy(out + 16, &dst, 4);
    memcpy(ids, out + 4, 16);
    fx_auth_mac(comm->boot.secret, "fx-data-hello", ids, sizeof(ids), NULL, 0, out + 20);
}

/* Returns the sending rank of a valid hello for this rank, or -1. */
static int check_hello(const struct fx_comm *comm, const uint8_t *hello, size_t len)
{
    uint8_t want[HELLO_LEN];
    int src;

    if (len != HELLO_LEN) {
        return -1;
    }
    memcpy(&src, hello + 12, 4);
    if (src < 0 || src >= comm->nranks) {
        return -1;
    }
    make_hello(comm, src, comm->rank, want);
    if (memcmp(want, hello, 20) != 0 || !fx_auth_equal(want + 20, hello + 20)) {
        return -1;
    }
    return src;
}

/* Takes the data connections that arrived on transport t's listener; returns how many. */
static int accept_pending(struct fx_comm *comm, int t)
{
    const struct fx_transport_ops *ops = comm->tps[t].ops;
    int taken                          = 0;

    for (int tries = 0; tries < 16; tries++) {
        uint8_t hello[FX_TP_HELLO_MAX];
        size_t hlen             = sizeof(hello);
        struct fx_tp_conn *conn = NULL;
        const char *why         = NULL;
        int src;

        if (ops->accept(comm->tps[t].lst, &conn, hello, &hlen) != FX_OK) {
            break;
        }
        src = check_hello(comm, hello, hlen);
        if (src < 0) {
            why = "not from this communicator (bad hello)";
        } else if (comm->peer_tp[src] != t) {
            why = "the pair's traffic belongs to another transport";
        } else if (comm->recv_conns[src] != NULL) {
            why = "duplicate";
        }
        if (why != NULL) {
            char peer[80];

            ops->conn_peer(conn, peer, sizeof(peer));
            fx_warn(FX_SUB_NET, "dropped a %s data connection from %s: %s", ops->name, peer, why);
            ops->close(conn);
            continue;
        }
        comm->recv_conns[src] = conn;
        taken++;
        fx_trace(FX_SUB_NET, "accepted %s data connection from rank %d", ops->name, src);
    }
    return taken;
}

bool fx_conn_accept(struct fx_comm *comm)
{
    int taken = 0;

    for (int t = 0; t < comm->ntps; t++) {
        taken += accept_pending(comm, t);
    }
    return taken > 0;
}

fx_status fx_conn_open(struct fx_comm *comm, int peer)
{
    const struct fx_comm_tp *ct = &comm->tps[comm->peer_tp[peer]];
    const struct fx_tp_addr *to = fx_route_addr(&comm->boot.table[peer], ct->ops->name);
    uint8_t hello[HELLO_LEN];
    fx_status status;

    if (comm->send_conns[peer] != NULL) {
        return FX_OK;
    }
    if (to == NULL) {
        return FX_ERR_INTERNAL; /* choose_routes picked a transport the peer publishes */
    }
    if (comm->connecting[peer] == NULL) {
        fx_trace(FX_SUB_NET, "connecting to rank %d over %s on demand", peer, ct->ops->name);
    }
    make_hello(comm, comm->rank, peer, hello);
    status = ct->ops->connect(ct->tp, to, hello, sizeof(hello), &comm->connecting[peer]);
    if (status == FX_OK) {
        comm->send_conns[peer] = comm->connecting[peer];
        comm->connecting[peer] = NULL;
    } else if (status != FX_INPROGRESS && comm->connecting[peer] != NULL) {
        ct->ops->close(comm->connecting[peer]); /* the transport left its handle to us */
        comm->connecting[peer] = NULL;
    }
    return status;
}

/*
 * Connects to the ring neighbours: sends go to rank + 1, receives come from rank - 1. With two
 * ranks both neighbours are the same rank: rank 0 opens one connection and both use it in both
 * directions, so each message's TCP acknowledgement rides on the data going the other way
 * instead of costing a packet of its own (small-message latency).
 */
fx_status fx_conn_connect_ring(struct fx_comm *comm, char *err, size_t errlen)
{
    int right              = comm->ring_order[(comm->ring_pos + 1) % comm->nranks];
    int left               = comm->ring_order[(comm->ring_pos - 1 + comm->nranks) % comm->nranks];
    bool duplex            = comm->nranks == 2;
    bool connects          = !duplex || comm->rank == 0;
    int64_t deadline       = fx_now_ms() + comm->cfg.timeout_ms;
    struct fx_tp_conn *out = NULL;
    uint8_t hello[HELLO_LEN];
    char who[160];

    const struct fx_comm_tp *rt = &comm->tps[comm->peer_tp[right]];
    const struct fx_tp_addr *to = fx_route_addr(&comm->boot.table[right], rt->ops->name);
    struct pollfd pfds[FX_BOOT_MAX_ADDRS];

    for (int t = 0; t < comm->ntps; t++) {
        pfds[t] =
            (struct pollfd){.fd = comm->tps[t].ops->wait_fd(comm->tps[t].tp), .events = POLLIN};
    }
    make_hello(comm, comm->rank, right, hello);
    while (comm->send_conns[right] == NULL || comm->recv_conns[left] == NULL) {
        if (connects && comm->send_conns[right] == NULL) {
            fx_status status = rt->ops->connect(rt->tp, to, hello, sizeof(hello), &out);
            if (status == FX_OK) {
                comm->send_conns[right] = out;
                if (duplex) {
                    comm->recv_conns[left] = out;
                }
            } else if (status != FX_INPROGRESS) {
                fx_boot_rank_str(&comm->boot, right, who, sizeof(who));
                snprintf(err, errlen, "cannot connect to %s: %s", who, fx_strerror(status));
                return status;
            }
        }
        if (!connects || !duplex) {
            (void)accept_pending(comm, comm->peer_tp[left]);
        }
        if (!connects && comm->recv_conns[left] != NULL) {
            comm->send_conns[right] = comm->recv_conns[left];
        }
        for (int t = 0; t < comm->ntps; t++) {
            comm->tps[t].ops->progress(comm->tps[t].tp);
        }
        if (comm->send_conns[right] != NULL && comm->recv_conns[left] != NULL) {
            break;
        }
        if (fx_now_ms() >= deadline) {
            int late = comm->send_conns[right] == NULL && connects ? right : left;

            if (comm->send_conns[right] == NULL && out != NULL) {
                rt->ops->close(out);
            }
            fx_boot_rank_str(&comm->boot, late, who, sizeof(who));
            snprintf(err, errlen, "data connection %s %s not established within %d ms",
                     connects && late == right ? "to" : "from", who, comm->cfg.timeout_ms);
            return FX_ERR_TIMEOUT;
        }
        poll(pfds, (nfds_t)comm->ntps, 5);
    }
    return FX_OK;
}
