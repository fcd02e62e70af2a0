/*
 * Bootstrap: authenticated rendezvous at rank 0, the rank table, and the control plane.
 *
 * Wire formats (little-endian, fixed sizes):
 *   server hello  40 B: u32 magic "FXB1", u16 version, u16 0, 32 B server nonce
 *   client proof  72 B: u32 magic, u16 version, u16 0, 32 B client nonce,
 *                       32 B HMAC(secret, "fx-boot-client" | server nonce | client nonce)
 *   server proof  36 B: u32 result (0 accepted, 1 rejected), 32 B
 *                       HMAC(secret, "fx-boot-server" | client nonce | server nonce)
 *   join         448 B: i32 rank, i32 nranks, i32 pid, u32 0, 64 B host, 16 B host id,
 *                       u32 address count (1..2), 2 x (8 B transport name, u32 address
 *                       length, 160 B address)                   (also a table entry)
 *   table head   288 B: i32 status (0 or an fx_status), u32 nranks, u64 comm id,
 *                       u64 chunk bytes, 256 B error text (status != 0)
 *   table        nranks join records, by rank
 *   control      u32 type, u32 payload length (<= 1024), payload
 *                       type 1 abort: i32 status, i32 failed rank, text
 *                       type 2 goodbye: empty
 *                       type 3 stall: i32 rank waited for (-1: withdrawn), u32 ms waited,
 *                              text naming the operation
 *                       type 4 report: opaque to the bootstrap (fx_links.c), rank 0 only
 */
#include "fx_boot.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fx_log.h"
#include "fx_sock.h"

#define BOOT_MAGIC       0x31425846u /* "FXB1" */
#define BOOT_VERSION     3 /* 3: addresses of 512 bytes, each rank's place (struct fx_boot_place) */
#define SRV_HELLO_LEN    40
#define CLI_PROOF_LEN    72
#define SRV_PROOF_LEN    36
#define PLACE_OFF        (100 + FX_BOOT_MAX_ADDRS * ADDR_REC_LEN)
#define PLACE_LEN        96
#define JOIN_LEN         (PLACE_OFF + PLACE_LEN)
#define ADDR_REC_LEN     (FX_BOOT_TP_NAME + 4 + FX_TP_ADDR_MAX)
#define TABLE_HEAD_LEN   288
#define CTRL_HDR_LEN     8
#define CTRL_MAX_PAYLOAD 1024
#define CTRL_ABORT       1
#define CTRL_BYE         2
#define CTRL_STALL       3
#define CTRL_REPORT      4
#define HANDSHAKE_MAX_MS 10000
#define TABLE_GRACE_MS   2000

/* ------------------------------------------------------------------ encoding */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* Strings of the place travel NUL-terminated in their fixed fields. */
static void put_str(uint8_t *p, const char *s, size_t len)
{
    memcpy(p, s, len);
    p[len - 1] = '\0';
}

static void get_str(char *s, const uint8_t *p, size_t len)
{
    memcpy(s, p, len);
    s[len - 1] = '\0';
}

static void encode_place(const struct fx_boot_place *pl, uint8_t *p)
{
    put_str(p, pl->dev_pci, sizeof(pl->dev_pci));
    put_str(p + 16, pl->nic, sizeof(pl->nic));
    put_str(p + 48, pl->nic_pci, sizeof(pl->nic_pci));
    put32(p + 64, (uint32_t)pl->numa);
    put32(p + 68, (uint32_t)pl->nnics);
    put32(p + 72, (uint32_t)pl->ngpus);
    put32(p + 76, pl->nic_mbps);
    p[80] = pl->nic_ib;
}

static void decode_place(const uint8_t *p, struct fx_boot_place *pl)
{
    get_str(pl->dev_pci, p, sizeof(pl->dev_pci));
    get_str(pl->nic, p + 16, sizeof(pl->nic));
    get_str(pl->nic_pci, p + 48, sizeof(pl->nic_pci));
    pl->numa     = (int32_t)get32(p + 64);
    pl->nnics    = (int32_t)get32(p + 68);
    pl->ngpus    = (int32_t)get32(p + 72);
    pl->nic_mbps = get32(p + 76);
    pl->nic_ib   = p[80] != 0;
}

static void encode_entry(const struct fx_boot_entry *e, int nranks, uint8_t *p)
{
    memset(p, 0, JOIN_LEN);
    put32(p, (uint32_t)e->rank);
    put32(p + 4, (uint32_t)nranks);
    put32(p + 8, (uint32_t)e->pid);
    memcpy(p + 16, e->host, FX_HOST_LEN);
    p[16 + FX_HOST_LEN - 1] = '\0';
    memcpy(p + 80, e->host_id, 16);
    put32(p + 96, (uint32_t)e->naddrs);
    for (int i = 0; i < e->naddrs && i < FX_BOOT_MAX_ADDRS; i++) {
        uint8_t *a = p + 100 + (size_t)i * ADDR_REC_LEN;

        memcpy(a, e->addrs[i].tp, FX_BOOT_TP_NAME);
        a[FX_BOOT_TP_NAME - 1] = '\0';
        put32(a + FX_BOOT_TP_NAME, e->addrs[i].addr.len);
        memcpy(a + FX_BOOT_TP_NAME + 4, e->addrs[i].addr.data, FX_TP_ADDR_MAX);
    }
    encode_place(&e->place, p + PLACE_OFF);
}

/* Decodes a join record; false when its address count or lengths are impossible. */
static bool decode_entry(const uint8_t *p, struct fx_boot_entry *e, int *nranks)
{
    e->rank = (int32_t)get32(p);
    *nranks = (int32_t)get32(p + 4);
    e->pid  = (int32_t)get32(p + 8);
    memcpy(e->host, p + 16, FX_HOST_LEN);
    e->host[FX_HOST_LEN - 1] = '\0';
    memcpy(e->host_id, p + 80, 16);
    e->naddrs = (int32_t)get32(p + 96);
    if (e->naddrs < 1 || e->naddrs > FX_BOOT_MAX_ADDRS) {
        return false;
    }
    for (int i = 0; i < e->naddrs; i++) {
        const uint8_t *a = p + 100 + (size_t)i * ADDR_REC_LEN;

        memcpy(e->addrs[i].tp, a, FX_BOOT_TP_NAME);
        e->addrs[i].tp[FX_BOOT_TP_NAME - 1] = '\0';
        e->addrs[i].addr.len                = get32(a + FX_BOOT_TP_NAME);
        memcpy(e->addrs[i].addr.data, a + FX_BOOT_TP_NAME + 4, FX_TP_ADDR_MAX);
        if (e->addrs[i].addr.len > FX_TP_ADDR_MAX || e->addrs[i].tp[0] == '\0') {
            return false;
        }
    }
    decode_place(p + PLACE_OFF, &e->place);
    return true;
}

static void encode_head(fx_status status, int nranks, const struct fx_boot_info *info,
                        const char *text, uint8_t *p)
{
    memset(p, 0, TABLE_HEAD_LEN);
    put32(p, (uint32_t)status);
    put32(p + 4, (uint32_t)nranks);
    put64(p + 8, info != NULL ? info->comm_id : 0);
    put64(p + 16, info != NULL ? info->chunk_bytes : 0);
    put64(p + 280, info != NULL ? info->algos : 0);
    if (text != NULL) {
        snprintf((char *)p + 24, 256, "%s", text);
    }
}

void fx_boot_rank_str(const struct fx_boot *boot, int rank, char *buf, size_t len)
{
    if (boot->table != NULL && rank >= 0 && rank < boot->nranks) {
        snprintf(buf, len, "rank %d (host %s, pid %d)", rank, boot->table[rank].host,
                 boot->table[rank].pid);
    } else {
        snprintf(buf, len, "rank %d", rank);
    }
}

/* ------------------------------------------------------------------ root side */

enum pend_state {
    PEND_PROOF, /* hello sent, waiting for the client's proof */
    PEND_JOIN,  /* authenticated, waiting for the join record */
    PEND_DONE,  /* joined: waiting for the others */
};

struct pending {
    int fd;
    enum pend_state state;
    int64_t deadline;
    uint8_t nonce[FX_NONCE_LEN];
    uint8_t buf[JOIN_LEN];
    size_t have;
    char peer[64];
};

struct root_state {
    struct fx_boot *boot;
    int lfd;
    struct pending *pend;
    int npend;
    int cap;
    int joined;
    int64_t deadline;
    int handshake_ms;
};

static void pend_drop(struct root_state *rs, int i, const char *why)
{
    if (why != NULL) {
        fx_warn(FX_SUB_BOOT, "bootstrap: dropped connection from %s: %s", rs->pend[i].peer, why);
    }
    close(rs->pend[i].fd);
    rs->pend[i] = rs->pend[--rs->npend];
}

static void root_accept(struct root_state *rs)
{
    for (int tries = 0; tries < 64; tries++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        uint8_t hello[SRV_HELLO_LEN];
        struct pending *p;
        int one = 1;
        int fd  = accept4(rs->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            return;
        }
        if (rs->npend == rs->cap) {
            fx_warn(FX_SUB_BOOT, "bootstrap: too many pending connections, refusing one");
            close(fd);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        p = &rs->pend[rs->npend++];
        memset(p, 0, sizeof(*p));
        p->fd       = fd;
        p->state    = PEND_PROOF;
        p->deadline = fx_now_ms() + rs->handshake_ms;
        fx_sock_addr_str((struct sockaddr *)&ss, p->peer, sizeof(p->peer));
        if (fx_auth_random(p->nonce, FX_NONCE_LEN) != FX_OK) {
            pend_drop(rs, rs->npend - 1, "no randomness for a nonce");
            continue;
        }
        memset(hello, 0, sizeof(hello));
        put32(hello, BOOT_MAGIC);
        hello[4] = BOOT_VERSION;
        memcpy(hello + 8, p->nonce, FX_NONCE_LEN);
        /* A fresh socket's send buffer always takes 40 bytes. */
        if (send(fd, hello, sizeof(hello), MSG_NOSIGNAL) != (ssize_t)sizeof(hello)) {
            pend_drop(rs, rs->npend - 1, "hello could not be sent");
        }
    }
}

/* Checks a client's proof; sends ours back. Returns a reason to drop, or NULL. */
static const char *root_check_proof(struct root_state *rs, struct pending *p)
{
    uint8_t mac[FX_MAC_LEN];
    uint8_t reply[SRV_PROOF_LEN];
    const uint8_t *cnonce = p->buf + 8;

    if (get32(p->buf) != BOOT_MAGIC) {
        return "not a libfabricx bootstrap client (bad magic)";
    }
    memset(reply, 0, sizeof(reply));
    if ((p->buf[4] | p->buf[5] << 8) != BOOT_VERSION) {
        put32(reply, 1);
        send(p->fd, reply, sizeof(reply), MSG_NOSIGNAL);
        return "bootstrap protocol version differs";
    }
    fx_auth_mac(rs->boot->secret, "fx-boot-client", p->nonce, FX_NONCE_LEN, cnonce, FX_NONCE_LEN,
                mac);
    if (!fx_auth_equal(mac, p->buf + 40)) {
        put32(reply, 1);
        send(p->fd, reply, sizeof(reply), MSG_NOSIGNAL);
        return "wrong job secret";
    }
    fx_auth_mac(rs->boot->secret, "fx-boot-server", cnonce, FX_NONCE_LEN, p->nonce, FX_NONCE_LEN,
                reply + 4);
    if (send(p->fd, reply, sizeof(reply), MSG_NOSIGNAL) != (ssize_t)sizeof(reply)) {
        return "proof could not be sent";
    }
    return NULL;
}

static void send_reject(int fd, fx_status status, const char *text)
{
    uint8_t head[TABLE_HEAD_LEN];

    encode_head(status, 0, NULL, text, head);
    send(fd, head, sizeof(head), MSG_NOSIGNAL);
}

/* Validates a join record and files it. Returns a reason to drop, or NULL. */
static const char *root_check_join(struct root_state *rs, struct pending *p, char *why, size_t len)
{
    struct fx_boot *boot = rs->boot;
    struct fx_boot_entry e;
    int nranks;

    if (!decode_entry(p->buf, &e, &nranks)) {
        return "malformed join record";
    }
    if (nranks != boot->nranks) {
        snprintf(why, len, "rank %d (host %s) was started with nranks %d, rank 0 with %d", e.rank,
                 e.host, nranks, boot->nranks);
    } else if (e.rank < 1 || e.rank >= boot->nranks) {
        snprintf(why, len, "rank %d (host %s) is out of range [1, %d)", e.rank, e.host,
                 boot->nranks);
    } else if (boot->fds[e.rank] >= 0) {
        snprintf(why, len, "rank %d joined twice: from host %s pid %d and host %s pid %d", e.rank,
                 boot->table[e.rank].host, boot->table[e.rank].pid, e.host, e.pid);
    } else {
        boot->table[e.rank] = e;
        boot->fds[e.rank]   = p->fd;
        rs->joined++;
        p->state = PEND_DONE;
        fx_info(FX_SUB_BOOT, "bootstrap: rank %d joined from %s (%d of %d)", e.rank, p->peer,
                rs->joined, boot->nranks);
        return NULL;
    }
    fx_warn(FX_SUB_BOOT, "bootstrap: %s", why);
    send_reject(p->fd, FX_ERR_INVALID_ARG, why);
    return why;
}

/* Reads what a pending connection has sent and advances it. */
static void root_read(struct root_state *rs, int i)
{
    struct pending *p = &rs->pend[i];
    size_t need       = p->state == PEND_PROOF ? CLI_PROOF_LEN : JOIN_LEN;
    const char *drop  = NULL;
    char why[256];
    ssize_t n = recv(p->fd, p->buf + p->have, need - p->have, 0);

    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        pend_drop(rs, i, p->state == PEND_PROOF ? "closed before authenticating" : "closed");
        return;
    }
    if (n < 0) {
        return;
    }
    p->have += (size_t)n;
    if (p->have < need) {
        return;
    }
    p->have = 0;
    if (p->state == PEND_PROOF) {
        drop     = root_check_proof(rs, p);
        p->state = PEND_JOIN;
    } else {
        drop = root_check_join(rs, p, why, sizeof(why));
        if (drop == NULL) {
            /* Filed in the table: the pending slot no longer owns the fd. */
            rs->pend[i] = rs->pend[--rs->npend];
            return;
        }
    }
    if (drop != NULL) {
        pend_drop(rs, i, drop);
    }
}

static void missing_ranks(const struct fx_boot *boot, char *buf, size_t len)
{
    size_t o  = 0;
    int shown = 0;

    buf[0] = '\0';
    for (int r = 1; r < boot->nranks && o < len; r++) {
        if (boot->fds[r] >= 0) {
            continue;
        }
        if (shown == 16) {
            snprintf(buf + o, len - o, ", ...");
            break;
        }
        o += (size_t)snprintf(buf + o, len - o, "%s%d", shown ? ", " : "", r);
        shown++;
    }
}

static fx_status root_send_table(struct root_state *rs, int64_t deadline)
{
    struct fx_boot *boot = rs->boot;
    size_t len           = TABLE_HEAD_LEN + (size_t)boot->nranks * JOIN_LEN;
    uint8_t *msg         = malloc(len);
    fx_status status     = FX_OK;

    if (msg == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    encode_head(FX_OK, boot->nranks, &boot->info, NULL, msg);
    for (int r = 0; r < boot->nranks; r++) {
        encode_entry(&boot->table[r], boot->nranks, msg + TABLE_HEAD_LEN + (size_t)r * JOIN_LEN);
    }
    for (int r = 1; r < boot->nranks && status == FX_OK; r++) {
        status = fx_sock_write_all(boot->fds[r], msg, len, deadline);
        if (status != FX_OK) {
            fx_warn(FX_SUB_BOOT, "bootstrap: sending the table to rank %d failed: %s", r,
                    fx_strerror(status));
        }
    }
    free(msg);
    return status;
}

static void root_fail_all(struct root_state *rs, fx_status status, const char *text)
{
    for (int r = 1; r < rs->boot->nranks; r++) {
        if (rs->boot->fds[r] >= 0) {
            send_reject(rs->boot->fds[r], status, text);
        }
    }
}

/* One poll round over the listener and the pending connections. */
static void root_poll(struct root_state *rs)
{
    struct pollfd pfd[257];
    int n        = 0;
    int64_t now  = fx_now_ms();
    int64_t wait = rs->deadline - now;

    pfd[n++] = (struct pollfd){.fd = rs->lfd, .events = POLLIN};
    for (int i = 0; i < rs->npend && n < 257; i++) {
        pfd[n++] = (struct pollfd){.fd = rs->pend[i].fd, .events = POLLIN};
        if (rs->pend[i].deadline - now < wait) {
            wait = rs->pend[i].deadline - now;
        }
    }
    poll(pfd, (nfds_t)n, wait < 0 ? 0 : (wait > 200 ? 200 : (int)wait));
    now = fx_now_ms();
    for (int i = n - 2; i >= 0; i--) {
        if (i >= rs->npend) {
            continue;
        }
        if (pfd[i + 1].revents != 0) {
            root_read(rs, i);
        } else if (now >= rs->pend[i].deadline) {
            pend_drop(rs, i, "no complete handshake in time");
        }
    }
    if (pfd[0].revents & POLLIN) {
        root_accept(rs);
    }
}

static fx_status root_run(struct fx_boot *boot, int lfd, int timeout_ms, char *err, size_t errlen)
{
    struct root_state rs = {.boot = boot, .lfd = lfd, .joined = 1};
    fx_status status;
    char missing[200];

    rs.cap          = 256;
    rs.pend         = calloc((size_t)rs.cap, sizeof(*rs.pend));
    rs.deadline     = fx_now_ms() + timeout_ms;
    rs.handshake_ms = timeout_ms < HANDSHAKE_MAX_MS ? timeout_ms : HANDSHAKE_MAX_MS;
    if (rs.pend == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    while (rs.joined < boot->nranks && fx_now_ms() < rs.deadline) {
        root_poll(&rs);
    }
    while (rs.npend > 0) {
        pend_drop(&rs, rs.npend - 1, rs.joined < boot->nranks ? "init ended" : NULL);
    }
    free(rs.pend);
    if (rs.joined < boot->nranks) {
        missing_ranks(boot, missing, sizeof(missing));
        snprintf(err, errlen, "init timed out after %d ms: rank%s %s never joined (%d of %d did)",
                 timeout_ms, strchr(missing, ',') ? "s" : "", missing, rs.joined, boot->nranks);
        root_fail_all(&rs, FX_ERR_TIMEOUT, err);
        return FX_ERR_TIMEOUT;
    }
    status = root_send_table(&rs, fx_now_ms() + rs.handshake_ms);
    if (status != FX_OK) {
        snprintf(err, errlen, "bootstrap: could not send the rank table (%s)", fx_strerror(status));
    }
    return status;
}

/* ------------------------------------------------------------------ client side */

static fx_status client_auth(struct fx_boot *boot, int fd, const char *root, int64_t deadline,
                             char *err, size_t errlen)
{
    uint8_t hello[SRV_HELLO_LEN];
    uint8_t proof[CLI_PROOF_LEN];
    uint8_t reply[SRV_PROOF_LEN];
    uint8_t mac[FX_MAC_LEN];
    fx_status status = fx_sock_read_all(fd, hello, sizeof(hello), deadline);

    if (status != FX_OK || get32(hello) != BOOT_MAGIC) {
        snprintf(err, errlen, "bootstrap root at %s did not answer as a libfabricx root (%s)", root,
                 status != FX_OK ? fx_strerror(status) : "bad magic");
        return status == FX_ERR_TIMEOUT ? FX_ERR_TIMEOUT : FX_ERR_CONNECTION;
    }
    memset(proof, 0, sizeof(proof));
    put32(proof, BOOT_MAGIC);
    proof[4] = BOOT_VERSION;
    status   = fx_auth_random(proof + 8, FX_NONCE_LEN);
    if (status != FX_OK) {
        snprintf(err, errlen, "no randomness for a nonce");
        return status;
    }
    fx_auth_mac(boot->secret, "fx-boot-client", hello + 8, FX_NONCE_LEN, proof + 8, FX_NONCE_LEN,
                proof + 40);
    status = fx_sock_write_all(fd, proof, sizeof(proof), deadline);
    if (status == FX_OK) {
        status = fx_sock_read_all(fd, reply, sizeof(reply), deadline);
    }
    if (status != FX_OK || get32(reply) != 0) {
        snprintf(err, errlen,
                 "bootstrap root at %s rejected this rank: wrong job secret or unique id (%s)",
                 root, status != FX_OK ? fx_strerror(status) : "proof refused");
        return FX_ERR_AUTH;
    }
    fx_auth_mac(boot->secret, "fx-boot-server", proof + 8, FX_NONCE_LEN, hello + 8, FX_NONCE_LEN,
                mac);
    if (!fx_auth_equal(mac, reply + 4)) {
        snprintf(err, errlen, "bootstrap root at %s could not prove it knows the job secret", root);
        return FX_ERR_AUTH;
    }
    return FX_OK;
}

/* Connects to the first reachable root address, retrying refusals until the deadline. */
static fx_status client_connect(const struct fx_uid *uid, int64_t deadline, int *fd, char *root,
                                size_t rootlen, char *err, size_t errlen)
{
    int64_t backoff = 10;

    for (;;) {
        for (int i = 0; i < uid->naddr; i++) {
            const struct sockaddr *sa = (const struct sockaddr *)&uid->addrs[i];
            socklen_t sl =
                sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);

            fx_sock_addr_str(sa, root, rootlen);
            if (fx_sock_connect(sa, sl, deadline, fd, err, errlen) == FX_OK) {
                return FX_OK;
            }
        }
        if (fx_now_ms() + backoff >= deadline) {
            snprintf(err + strlen(err), errlen - strlen(err), " (bootstrap root unreachable)");
            return FX_ERR_TIMEOUT;
        }
        usleep((useconds_t)backoff * 1000);
        backoff = backoff < 200 ? backoff * 2 : 200;
    }
}

static fx_status client_read_table(struct fx_boot *boot, int fd, const char *root, int64_t deadline,
                                   char *err, size_t errlen)
{
    uint8_t head[TABLE_HEAD_LEN];
    uint8_t rec[JOIN_LEN];
    int nranks;
    fx_status status = fx_sock_read_all(fd, head, sizeof(head), deadline);

    if (status != FX_OK) {
        snprintf(err, errlen, "no rank table from the bootstrap root at %s (%s)", root,
                 status == FX_ERR_TIMEOUT ? "timed out" : "connection closed");
        return status == FX_ERR_TIMEOUT ? FX_ERR_TIMEOUT : FX_ERR_CONNECTION;
    }
    if (get32(head) != 0) {
        snprintf(err, errlen, "%.255s", (const char *)head + 24);
        return (fx_status)(int32_t)get32(head);
    }
    if ((int)get32(head + 4) != boot->nranks) {
        snprintf(err, errlen, "rank table has %u ranks, expected %d", get32(head + 4),
                 boot->nranks);
        return FX_ERR_MISMATCH;
    }
    boot->info.comm_id     = get64(head + 8);
    boot->info.chunk_bytes = get64(head + 16);
    boot->info.algos       = get64(head + 280);
    for (int r = 0; r < boot->nranks; r++) {
        status = fx_sock_read_all(fd, rec, sizeof(rec), deadline);
        if (status != FX_OK || !decode_entry(rec, &boot->table[r], &nranks) ||
            boot->table[r].rank != r) {
            snprintf(err, errlen, "rank table from %s is truncated or malformed", root);
            return FX_ERR_CONNECTION;
        }
    }
    return FX_OK;
}

static fx_status client_run(struct fx_boot *boot, const struct fx_uid *uid,
                            const struct fx_boot_entry *self, int timeout_ms, char *err,
                            size_t errlen)
{
    int64_t start    = fx_now_ms();
    int64_t deadline = start + timeout_ms;
    uint8_t join[JOIN_LEN];
    char root[64];
    int fd           = -1;
    fx_status status = client_connect(uid, deadline, &fd, root, sizeof(root), err, errlen);

    if (status != FX_OK) {
        return status;
    }
    status = client_auth(boot, fd, root, deadline, err, errlen);
    if (status == FX_OK) {
        encode_entry(self, boot->nranks, join);
        status = fx_sock_write_all(fd, join, sizeof(join), deadline);
        if (status != FX_OK) {
            snprintf(err, errlen, "sending the join record to %s failed", root);
        }
    }
    if (status == FX_OK) {
        status = client_read_table(boot, fd, root, deadline + TABLE_GRACE_MS, err, errlen);
    }
    if (status != FX_OK) {
        close(fd);
        return status;
    }
    boot->fds[0] = fd;
    fx_info(FX_SUB_BOOT, "bootstrap: joined through %s, %d ranks, %lld ms", root, boot->nranks,
            (long long)(fx_now_ms() - start));
    return FX_OK;
}

/* ------------------------------------------------------------------ init / fini */

static fx_status boot_alloc(struct fx_boot *boot, int nranks, int rank)
{
    memset(boot, 0, sizeof(*boot));
    boot->rank   = rank;
    boot->nranks = nranks;
    boot->nfds   = rank == 0 ? nranks : 1;
    boot->table  = calloc((size_t)nranks, sizeof(*boot->table));
    boot->fds    = malloc(sizeof(int) * (size_t)boot->nfds);
    boot->bye    = calloc((size_t)boot->nfds, sizeof(bool));
    boot->rx     = calloc((size_t)boot->nfds, sizeof(*boot->rx));
    if (rank == 0) {
        boot->stall = calloc((size_t)nranks, sizeof(*boot->stall));
    }
    if (boot->table == NULL || boot->fds == NULL || boot->bye == NULL || boot->rx == NULL ||
        (rank == 0 && boot->stall == NULL)) {
        return FX_ERR_NO_MEMORY;
    }
    for (int i = 0; i < boot->nfds; i++) {
        boot->fds[i] = -1;
    }
    for (int r = 0; rank == 0 && r < nranks; r++) {
        boot->stall[r].on = -1;
    }
    return FX_OK;
}

static fx_status root_listener(const struct fx_uid *uid, int *lfd, char *err, size_t errlen)
{
    uint16_t port;

    *lfd = fx_uid_take_listener(uid);
    if (*lfd >= 0) {
        return FX_OK;
    }
    return fx_sock_listen_any(uid->port, lfd, &port, err, errlen);
}

fx_status fx_boot_init(struct fx_boot *boot, const struct fx_uid *uid, int nranks, int rank,
                       const struct fx_boot_entry *self, const struct fx_boot_info *proposal,
                       int timeout_ms, char *err, size_t errlen)
{
    fx_status status = boot_alloc(boot, nranks, rank);
    int lfd          = -1;

    if (status != FX_OK) {
        snprintf(err, errlen, "out of memory for the rank table");
        goto err_free;
    }
    memcpy(boot->secret, uid->secret, FX_SECRET_LEN);
    boot->table[rank] = *self;
    if (rank != 0) {
        fx_uid_drop_listener(uid);
        status = client_run(boot, uid, self, timeout_ms, err, errlen);
        if (status != FX_OK) {
            goto err_free;
        }
        return FX_OK;
    }
    boot->info = *proposal;
    status     = fx_auth_random(&boot->info.comm_id, sizeof(boot->info.comm_id));
    if (status == FX_OK) {
        status = root_listener(uid, &lfd, err, errlen);
    }
    if (status != FX_OK) {
        goto err_free;
    }
    status = root_run(boot, lfd, timeout_ms, err, errlen);
    close(lfd);
    if (status != FX_OK) {
        goto err_close;
    }
    return FX_OK;

err_close:
    for (int i = 0; i < boot->nfds; i++) {
        if (boot->fds[i] >= 0) {
            close(boot->fds[i]);
        }
    }
err_free:
    free(boot->table);
    free(boot->fds);
    free(boot->bye);
    free(boot->rx);
    free(boot->stall);
    memset(boot, 0, sizeof(*boot));
    return status;
}

static void ctrl_send(int fd, uint32_t type, const void *payload, size_t len)
{
    uint8_t msg[CTRL_HDR_LEN + CTRL_MAX_PAYLOAD];

    put32(msg, type);
    put32(msg + 4, (uint32_t)len);
    if (len > 0) {
        memcpy(msg + CTRL_HDR_LEN, payload, len);
    }
    /* Control messages are tiny and rare: a full socket buffer means the peer is stuck, and
     * the notice is then best effort. */
    if (send(fd, msg, CTRL_HDR_LEN + len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        fx_trace(FX_SUB_BOOT, "control message not sent: %s", strerror(errno));
    }
}

void fx_boot_fini(struct fx_boot *boot)
{
    if (boot->fds == NULL) {
        return;
    }
    for (int i = 0; i < boot->nfds; i++) {
        if (boot->fds[i] >= 0) {
            ctrl_send(boot->fds[i], CTRL_BYE, NULL, 0);
            shutdown(boot->fds[i], SHUT_WR);
            close(boot->fds[i]);
        }
    }
    free(boot->table);
    free(boot->fds);
    free(boot->bye);
    free(boot->rx);
    free(boot->stall);
    memset(boot, 0, sizeof(*boot));
}

int fx_boot_ctrl_fds(const struct fx_boot *boot, int *fds, int max)
{
    int n = 0;

    for (int i = 0; i < boot->nfds && n < max; i++) {
        if (boot->fds[i] >= 0) {
            fds[n++] = boot->fds[i];
        }
    }
    return n;
}

static void abort_payload(fx_status status, int failed_rank, const char *text, uint8_t *buf,
                          size_t *len)
{
    size_t tlen = strlen(text);

    if (tlen > CTRL_MAX_PAYLOAD - 8) {
        tlen = CTRL_MAX_PAYLOAD - 8;
    }
    put32(buf, (uint32_t)status);
    put32(buf + 4, (uint32_t)failed_rank);
    memcpy(buf + 8, text, tlen);
    *len = 8 + tlen;
}

static void root_broadcast(struct fx_boot *boot, int except, const uint8_t *payload, size_t len)
{
    for (int r = 1; r < boot->nranks; r++) {
        if (r != except && boot->fds[r] >= 0) {
            ctrl_send(boot->fds[r], CTRL_ABORT, payload, len);
        }
    }
}

void fx_boot_ctrl_abort(struct fx_boot *boot, fx_status status, int failed_rank, const char *text)
{
    uint8_t payload[CTRL_MAX_PAYLOAD];
    size_t len;

    if (boot->fds == NULL) {
        return;
    }
    abort_payload(status, failed_rank, text, payload, &len);
    if (boot->rank == 0) {
        root_broadcast(boot, -1, payload, len);
    } else if (boot->fds[0] >= 0) {
        ctrl_send(boot->fds[0], CTRL_ABORT, payload, len);
    }
}

void fx_boot_ctrl_report(struct fx_boot *boot, const void *payload, size_t len)
{
    if (boot->fds == NULL || len > CTRL_MAX_PAYLOAD) {
        return;
    }
    if (boot->rank == 0) {
        if (boot->on_report != NULL) {
            boot->on_report(boot->report_arg, 0, payload, len);
        }
        return;
    }
    if (boot->fds[0] >= 0) {
        ctrl_send(boot->fds[0], CTRL_REPORT, payload, len);
    }
}

/* ------------------------------------------------------------------ stalls */

static void record_stall(struct fx_boot *boot, int rank, int on, int64_t idle_ms, const char *what,
                         size_t wlen)
{
    struct fx_boot_stall *st = &boot->stall[rank];
    int64_t now              = fx_now_ms();

    st->on = on >= 0 && on < boot->nranks && on != rank ? on : -1;
    if (st->on < 0) {
        /* Withdrawn: the oldest standing report decides when the verdict is due. */
        boot->first_stall_ms = 0;
        for (int r = 0; r < boot->nranks; r++) {
            if (boot->stall[r].on >= 0 &&
                (boot->first_stall_ms == 0 || boot->stall[r].got_ms < boot->first_stall_ms)) {
                boot->first_stall_ms = boot->stall[r].got_ms;
            }
        }
        return;
    }
    st->since_ms = now - idle_ms;
    st->got_ms   = now;
    snprintf(st->what, sizeof(st->what), "%.*s", (int)wlen, what);
    if (boot->first_stall_ms == 0) {
        boot->first_stall_ms = now;
    }
}

void fx_boot_ctrl_stall(struct fx_boot *boot, int waiting_on, int64_t idle_ms, const char *what)
{
    uint8_t payload[8 + 96];
    size_t wlen = strlen(what);

    if (boot->fds == NULL) {
        return;
    }
    if (wlen > sizeof(payload) - 8) {
        wlen = sizeof(payload) - 8;
    }
    if (boot->rank == 0) {
        record_stall(boot, 0, waiting_on, idle_ms, what, wlen);
        return;
    }
    put32(payload, (uint32_t)waiting_on);
    put32(payload + 4, (uint32_t)(idle_ms < 0 ? 0 : idle_ms > INT32_MAX ? INT32_MAX : idle_ms));
    memcpy(payload + 8, what, wlen);
    if (boot->fds[0] >= 0) {
        ctrl_send(boot->fds[0], CTRL_STALL, payload, 8 + wlen);
    }
}

void fx_boot_stall_verdict(struct fx_boot *boot, int64_t grace_ms, struct fx_boot_event *ev)
{
    char chain[160];
    char who[128];
    size_t used = 0;
    int start   = -1;
    int r;

    ev->kind = FX_BOOT_EV_NONE;
    if (boot->rank != 0 || boot->stall == NULL || boot->verdict_sent || boot->first_stall_ms == 0 ||
        fx_now_ms() - boot->first_stall_ms < grace_ms) {
        return; /* the common case: called on every progress round */
    }
    chain[0] = '\0';
    /* Start from the rank that has waited longest; follow "waits for" at most nranks times. */
    for (r = 0; r < boot->nranks; r++) {
        if (boot->stall[r].on >= 0 &&
            (start < 0 || boot->stall[r].since_ms < boot->stall[start].since_ms)) {
            start = r;
        }
    }
    if (start < 0) {
        return;
    }
    r = start;
    for (int hops = 0; hops <= boot->nranks; hops++) {
        int n = snprintf(chain + used, sizeof(chain) - used, "%s%d", hops ? " -> " : "", r);

        used = n > 0 && (size_t)n < sizeof(chain) - used ? used + (size_t)n : sizeof(chain) - 1;
        if (boot->stall[r].on < 0 || hops == boot->nranks) {
            break;
        }
        r = boot->stall[r].on;
        if (r == start) {
            break;
        }
    }
    boot->verdict_sent = true;
    ev->kind           = FX_BOOT_EV_ABORT;
    ev->status         = FX_ERR_TIMEOUT;
    if (boot->stall[r].on >= 0) {
        /* Everyone on the chain waits: a cycle of waits, nobody to blame alone. */
        ev->failed_rank = -1;
        snprintf(ev->text, sizeof(ev->text),
                 "%s made no progress for %lld ms; the ranks wait for each other in a cycle "
                 "(%s), as if messages were lost or the ranks called different collectives",
                 boot->stall[start].what, (long long)(fx_now_ms() - boot->stall[start].since_ms),
                 chain);
    } else if (boot->bye[r]) {
        /* It destroyed its communicator: a wait for it (a message it never sent, a connection
         * it never made) can only end in failure. */
        fx_boot_rank_str(boot, r, who, sizeof(who));
        ev->failed_rank = r;
        ev->status      = FX_ERR_PEER_FAILED;
        snprintf(ev->text, sizeof(ev->text),
                 "%s made no progress for %lld ms because %s has left the communicator "
                 "(fx_comm_destroy) (wait chain: %s)",
                 boot->stall[start].what, (long long)(fx_now_ms() - boot->stall[start].since_ms),
                 who, chain);
    } else {
        fx_boot_rank_str(boot, r, who, sizeof(who));
        ev->failed_rank = r;
        snprintf(ev->text, sizeof(ev->text),
                 "%s made no progress for %lld ms because %s does not respond: it is stopped, "
                 "overloaded or not calling the collective (wait chain: %s)",
                 boot->stall[start].what, (long long)(fx_now_ms() - boot->stall[start].since_ms),
                 who, chain);
    }
    fx_warn(FX_SUB_COLL, "%s", ev->text);
    fx_boot_ctrl_abort(boot, ev->status, ev->failed_rank, ev->text);
}

static int fd_index(const struct fx_boot *boot, int fd)
{
    for (int i = 0; i < boot->nfds; i++) {
        if (boot->fds[i] == fd) {
            return i;
        }
    }
    return -1;
}

/* A control socket closed: without goodbye, that is a lost rank (or a lost root). */
static void ctrl_closed(struct fx_boot *boot, int i, struct fx_boot_event *ev)
{
    int lost = boot->rank == 0 ? i : 0;
    char who[128];

    close(boot->fds[i]);
    boot->fds[i] = -1;
    if (boot->bye[i] || ev->kind != FX_BOOT_EV_NONE) {
        return;
    }
    fx_boot_rank_str(boot, lost, who, sizeof(who));
    ev->kind        = FX_BOOT_EV_ABORT;
    ev->status      = FX_ERR_PEER_FAILED;
    ev->failed_rank = lost;
    snprintf(ev->text, sizeof(ev->text), "%s died or closed its connection%s", who,
             lost == 0 ? " (rank 0 holds the control plane)" : "");
    if (boot->rank == 0) {
        fx_boot_ctrl_abort(boot, ev->status, lost, ev->text);
    }
}

/* Handles one complete control frame from socket i. */
static void ctrl_frame(struct fx_boot *boot, int i, uint32_t type, const uint8_t *payload,
                       size_t len, struct fx_boot_event *ev)
{
    if (type == CTRL_BYE) {
        boot->bye[i] = true;
        return;
    }
    if (type == CTRL_STALL) {
        if (boot->rank == 0 && len >= 8) {
            record_stall(boot, i, (int32_t)get32(payload), (int64_t)get32(payload + 4),
                         (const char *)payload + 8, len - 8);
        }
        return;
    }
    if (type == CTRL_REPORT) {
        if (boot->rank == 0 && boot->on_report != NULL) {
            boot->on_report(boot->report_arg, i, payload, len);
        }
        return;
    }
    if (type != CTRL_ABORT || len < 8) {
        return;
    }
    if (boot->rank == 0) {
        root_broadcast(boot, i, payload, len);
    }
    if (ev->kind == FX_BOOT_EV_NONE) {
        ev->kind        = FX_BOOT_EV_ABORT;
        ev->status      = (fx_status)(int32_t)get32(payload);
        ev->failed_rank = (int32_t)get32(payload + 4);
        snprintf(ev->text, sizeof(ev->text), "%.*s", (int)(len - 8), (const char *)payload + 8);
    }
}

void fx_boot_ctrl_read(struct fx_boot *boot, int fd, struct fx_boot_event *ev)
{
    int i = fd_index(boot, fd);
    struct fx_boot_rx *rx;

    ev->kind = FX_BOOT_EV_NONE;
    if (i < 0) {
        return;
    }
    rx = &boot->rx[i];
    for (int rounds = 0; rounds < 64; rounds++) {
        ssize_t n  = recv(fd, rx->buf + rx->have, sizeof(rx->buf) - rx->have, MSG_DONTWAIT);
        size_t off = 0;

        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            ctrl_closed(boot, i, ev);
            return;
        }
        if (n < 0) {
            return;
        }
        rx->have += (size_t)n;
        while (rx->have - off >= CTRL_HDR_LEN) {
            uint32_t len = get32(rx->buf + off + 4);

            if (len > CTRL_MAX_PAYLOAD) {
                ctrl_closed(boot, i, ev);
                return;
            }
            if (rx->have - off < CTRL_HDR_LEN + len) {
                break;
            }
            ctrl_frame(boot, i, get32(rx->buf + off), rx->buf + off + CTRL_HDR_LEN, len, ev);
            off += CTRL_HDR_LEN + len;
        }
        memmove(rx->buf, rx->buf + off, rx->have - off);
        rx->have -= off;
    }
}
