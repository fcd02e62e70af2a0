/*
 * The verbs transport's source GID (verbs.c has the design). At init FX_IB_GID_INDEX is checked
 * against the chosen port's GID table (an index past the table, an empty entry or a type the
 * link layer cannot use is an error naming device, port and index), or, when it is -1, the
 * RoCE v2 GID is found for the log and for the order of the published addresses. The QPs are
 * the transport's own (verbs_conn.c moves them INIT -> RTR -> RTS with rdma_init_qp_attr's
 * attributes), so a forced index replaces, in each QP's RTR address vector, the source GID
 * index rdma_cm resolved from the IP address it bound; -1 leaves rdma_cm's choice. Either way
 * the GID the QPs really use is logged whenever it changes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "fx_log.h"
#include "fx_sock.h"
#include "transports/verbs/verbs_int.h"

static const char *gid_type_str(uint32_t type)
{
    switch (type) {
    case IBV_GID_TYPE_IB:
        return "IB";
    case IBV_GID_TYPE_ROCE_V1:
        return "RoCE v1";
    case IBV_GID_TYPE_ROCE_V2:
        return "RoCE v2";
    default:
        return "unknown type";
    }
}

static bool gid_v4_mapped(const union ibv_gid *g)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    return memcmp(g->raw, prefix, sizeof(prefix)) == 0;
}

static bool gid_zero(const union ibv_gid *g)
{
    static const union ibv_gid zero;

    return memcmp(g, &zero, sizeof(zero)) == 0;
}

/* The GID as an address: IPv4 when it is IPv4-mapped, else IPv6. */
static void gid_str(const union ibv_gid *g, char *out, size_t len)
{
    if (gid_v4_mapped(g)) {
        inet_ntop(AF_INET, g->raw + 12, out, (socklen_t)len);
    } else {
        inet_ntop(AF_INET6, g->raw, out, (socklen_t)len);
    }
}

static bool ethernet(uint8_t link_layer)
{
    return link_layer == IBV_LINK_LAYER_ETHERNET;
}

/*
 * Reads entry index of a port's GID table into e; false, with the reason in why, when it is
 * empty, unreadable, or of a type the port's link layer cannot use (RoCE: v1 or v2;
 * InfiniBand: IB).
 */
static bool gid_entry(struct ibv_context *ctx, int port, int index, uint8_t link_layer,
                      struct ibv_gid_entry *e, char *why, size_t len)
{
    int ret = ibv_query_gid_ex(ctx, (uint32_t)port, (uint32_t)index, e, 0);

    if (ret == ENODATA || (ret == 0 && gid_zero(&e->gid))) {
        snprintf(why, len, "is empty (all zero)");
        return false;
    }
    if (ret != 0) {
        snprintf(why, len, "cannot be read (ibv_query_gid_ex: %s)", strerror(ret));
        return false;
    }
    if (ethernet(link_layer) ? e->gid_type == IBV_GID_TYPE_IB : e->gid_type != IBV_GID_TYPE_IB) {
        snprintf(why, len, "has type %s, not usable on %s port", gid_type_str(e->gid_type),
                 ethernet(link_layer) ? "an Ethernet (RoCE)" : "an InfiniBand");
        return false;
    }
    return true;
}

/* RoCE: the first IPv4-mapped GID of type RoCE v2, else the first IPv4-mapped one, else 0;
 * InfiniBand: 0. */
static int gid_auto(struct ibv_context *ctx, int port, const struct ibv_port_attr *pa)
{
    struct ibv_gid_entry e;
    int v4 = -1;

    for (int i = 0; ethernet(pa->link_layer) && i < pa->gid_tbl_len && i < 256; i++) {
        if (ibv_query_gid_ex(ctx, (uint32_t)port, (uint32_t)i, &e, 0) != 0 ||
            !gid_v4_mapped(&e.gid)) {
            continue;
        }
        if (e.gid_type == IBV_GID_TYPE_ROCE_V2) {
            return i;
        }
        if (v4 < 0) {
            v4 = i;
        }
    }
    return v4 >= 0 ? v4 : 0;
}

/* The IPv4 address of a RoCE v2 GID goes first among the published addresses. */
static void publish_first(struct fx_tp *tp, const union ibv_gid *gid)
{
    for (int i = 1; gid_v4_mapped(gid) && i < tp->nlocal; i++) {
        if (tp->local[i].ss_family == AF_INET &&
            memcmp(&((struct sockaddr_in *)&tp->local[i])->sin_addr, gid->raw + 12, 4) == 0) {
            struct sockaddr_storage t = tp->local[0];

            tp->local[0] = tp->local[i];
            tp->local[i] = t;
        }
    }
}

fx_status fx_vb_gid_choose(struct fx_tp *tp, struct ibv_context *ctx,
                           const struct ibv_port_attr *pa, int want)
{
    struct ibv_gid_entry e;
    char why[96];
    char addr[INET6_ADDRSTRLEN];
    int index = want >= 0 ? want : gid_auto(ctx, tp->port, pa);

    tp->link_layer = pa->link_layer;
    tp->gid_index  = want;
    tp->gid_used   = -1;
    if (want >= pa->gid_tbl_len) {
        fx_warn(FX_SUB_NET, "verbs: FX_IB_GID_INDEX=%d: %s port %d has %d GIDs (0 to %d)", want,
                tp->hca, tp->port, pa->gid_tbl_len, pa->gid_tbl_len - 1);
        return FX_ERR_INVALID_ARG;
    }
    if (!gid_entry(ctx, tp->port, index, pa->link_layer, &e, why, sizeof(why))) {
        if (want >= 0) {
            fx_warn(FX_SUB_NET, "verbs: FX_IB_GID_INDEX=%d: GID %d of %s port %d %s", want, want,
                    tp->hca, tp->port, why);
            return FX_ERR_INVALID_ARG;
        }
        fx_info(FX_SUB_NET, "verbs: %s port %d: no usable GID found (GID %d %s); rdma_cm chooses",
                tp->hca, tp->port, index, why);
        return FX_OK;
    }
    gid_str(&e.gid, addr, sizeof(addr));
    fx_info(FX_SUB_NET, "verbs: %s port %d: GID index %d (%s, %s), %s", tp->hca, tp->port, index,
            gid_type_str(e.gid_type), addr,
            want >= 0 ? "forced on every QP by FX_IB_GID_INDEX"
                      : "the default; each QP uses the GID rdma_cm resolves from its address");
    publish_first(tp, &e.gid);
    return FX_OK;
}

/* Does the GID carry the IP address the id is bound to? */
static bool gid_is_addr(const union ibv_gid *g, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        return gid_v4_mapped(g) &&
               memcmp(g->raw + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4) == 0;
    }
    return sa->sa_family == AF_INET6 &&
           memcmp(g->raw, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16) == 0;
}

/* Warns once per instance when the forced GID is not the address rdma_cm bound for q. */
static void gid_check_addr(struct fx_tp_conn *c, struct vb_qp *q, const struct ibv_gid_entry *e)
{
    struct sockaddr *sa = rdma_get_local_addr(q->id);
    char gid[INET6_ADDRSTRLEN];
    char bound[80];

    if (c->tp->gid_warned || !ethernet(c->tp->link_layer) || gid_is_addr(&e->gid, sa)) {
        return;
    }
    c->tp->gid_warned = true;
    gid_str(&e->gid, gid, sizeof(gid));
    fx_sock_addr_str(sa, bound, sizeof(bound));
    fx_warn(FX_SUB_NET,
            "verbs: FX_IB_GID_INDEX=%d: GID %s (%s) of %s port %u is not the address rdma_cm "
            "bound for %s (%s); the QPs send from the GID",
            c->tp->gid_index, gid, gid_type_str(e->gid_type),
            ibv_get_device_name(q->id->verbs->device), q->id->port_num, c->peer, bound);
}

void fx_vb_gid_rtr(const struct fx_tp *tp, struct ibv_qp_attr *a)
{
    if (tp->gid_index >= 0 && (a->ah_attr.is_global || ethernet(tp->link_layer))) {
        a->ah_attr.grh.sgid_index = (uint8_t)tp->gid_index;
    }
}

void fx_vb_gid_used(struct fx_tp_conn *c, struct vb_qp *q, const struct ibv_qp_attr *a)
{
    struct fx_tp *tp = c->tp;
    struct ibv_gid_entry e;
    char addr[INET6_ADDRSTRLEN] = "?";
    int index;

    if (!a->ah_attr.is_global) {
        return; /* InfiniBand within the subnet: the LID routes, no source GID is sent */
    }
    index = a->ah_attr.grh.sgid_index;
    if (index == tp->gid_used && (tp->gid_index < 0 || tp->gid_warned)) {
        return;
    }
    if (ibv_query_gid_ex(q->id->verbs, q->id->port_num, (uint32_t)index, &e, 0) != 0) {
        memset(&e, 0, sizeof(e));
        e.gid_type = UINT32_MAX;
    }
    if (index != tp->gid_used) {
        gid_str(&e.gid, addr, sizeof(addr));
        fx_info(FX_SUB_NET, "verbs: QP 0x%x to %s uses GID index %d of %s port %u (%s, %s)%s",
                q->qp->qp_num, c->peer, index, ibv_get_device_name(q->id->verbs->device),
                q->id->port_num, gid_type_str(e.gid_type), addr,
                tp->gid_index >= 0 ? ", forced by FX_IB_GID_INDEX" : ", rdma_cm's choice");
        tp->gid_used = index;
    }
    if (tp->gid_index >= 0) {
        gid_check_addr(c, q, &e);
    }
}
