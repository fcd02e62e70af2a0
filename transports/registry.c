/* The transports of this build, in preference order (DESIGN.md: chosen by FX_TRANSPORT). */
#include <string.h>

#include "fx_config_build.h"
#include "transports/transport.h"

#if FX_HAVE_TCP
extern const struct fx_transport_ops fx_tcp_ops;
#endif
extern const struct fx_transport_ops fx_shm_ops;
#if FX_HAVE_UCX
extern const struct fx_transport_ops fx_ucx_ops;
#endif
#if FX_HAVE_VERBS
extern const struct fx_transport_ops fx_verbs_ops;
#endif

const struct fx_transport_ops *const fx_transports[] = {
#if FX_HAVE_TCP
    &fx_tcp_ops,
#endif
    &fx_shm_ops, /* ranks of one host only: chosen with FX_TRANSPORT=shm */
#if FX_HAVE_UCX
    &fx_ucx_ops, /* after tcp, so never the default: chosen with FX_TRANSPORT=ucx */
#endif
#if FX_HAVE_VERBS
    &fx_verbs_ops, /* after tcp and ucx, never the default: chosen with FX_TRANSPORT=verbs */
#endif
    NULL,
};

const struct fx_transport_ops *fx_transport_find(const char *name)
{
    for (int i = 0; fx_transports[i] != NULL; i++) {
        if (strcmp(fx_transports[i]->name, name) == 0) {
            return fx_transports[i];
        }
    }
    return NULL;
}
