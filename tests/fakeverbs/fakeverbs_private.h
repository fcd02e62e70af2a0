/* The few calls the fake librdmacm makes into the fake libibverbs (tests/fakeverbs). Exported
 * under the version node FAKEVERBS_PRIVATE, never by the real libraries. */
#ifndef FAKEVERBS_PRIVATE_H
#define FAKEVERBS_PRIVATE_H

#include <infiniband/verbs.h>

/* Why the NIC calls a QP's connection hook. */
enum fv_cm_why {
    FV_CM_DREQ = 1, /* the peer sent a disconnect request (the NIC has answered it) */
    FV_CM_DREP,     /* the peer answered our disconnect request */
    FV_CM_EOF,      /* the peer's end of the connection closed (process gone) */
};

typedef void (*fv_cm_hook_fn)(void *arg, enum fv_cm_why why);

/* QPs are named by their device context and number, so that a QP the program created itself
 * (an "external" QP, passed to rdma_connect/rdma_accept as qp_num) and one it destroyed before
 * its id are handled alike: a QP that is gone is simply not found. */

/* Hands the connected stream socket fd to the NIC of the QP's device: from now on the NIC
 * moves the QP's traffic over it and owns (closes) it. peer_qpn is the remote QP number. The
 * hook is called from the NIC thread (with the device's lock held: it must only queue).
 * ENOENT: no such QP. */
int fv_qp_attach(struct ibv_context *ctx, uint32_t qpn, int fd, uint32_t peer_qpn,
                 fv_cm_hook_fn hook, void *arg);
/* No more hook calls with arg after this returns. */
void fv_qp_clear_hook(struct ibv_context *ctx, uint32_t qpn, void *arg);
/* Sends a disconnect request to the peer; returns 0, or an errno value when not connected. */
int fv_qp_send_dreq(struct ibv_context *ctx, uint32_t qpn);
/* The QP's state in the hardware (enum ibv_qp_state), -1 when there is no such QP. */
int fv_qp_state(struct ibv_context *ctx, uint32_t qpn);
/* The name of such a state ("RTS", "gone"). */
const char *fv_qp_state_str(int state);
/* Verbose logging (FAKEVERBS_DEBUG=1) on. */
int fv_debug_enabled(void);

#endif
