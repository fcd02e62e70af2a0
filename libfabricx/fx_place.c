/* Where this process runs: accelerator, NIC, binding and interface (fx_place.h). */
#include "fx_place.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx_log.h"
#include "fx_topo.h"
#include "transports/tcp/tcp_iface.h"

/* The launchers' local rank variables, in the order they are looked at. */
static const char *const local_rank_vars[] = {"LOCAL_RANK", "SLURM_LOCALID",
                                              "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"};

#define FX_PLACE_MAX_NICS 8 /* NICs a rank's interfaces may come from */

/* Decided once per process (for one FX_DEVICE value): reading the topology takes a while. */
static pthread_mutex_t place_lock = PTHREAD_MUTEX_INITIALIZER;
static bool place_done, place_bound, place_asked_ifname;
static char place_device[64];
static struct fx_boot_place place_cached;
static char place_ifname[256];
static fx_status place_status;
static char place_err[256];

static void place_unknown(struct fx_boot_place *p)
{
    memset(p, 0, sizeof(*p));
    p->numa  = -1;
    p->nnics = -1;
    p->ngpus = -1;
}

/* The launcher's local rank and the variable it came from; -1 when none is set. */
static int local_rank(const char **var)
{
    for (size_t i = 0; i < sizeof(local_rank_vars) / sizeof(local_rank_vars[0]); i++) {
        const char *v = getenv(local_rank_vars[i]);
        char *end;
        long r;

        if (v == NULL || v[0] == '\0') {
            continue;
        }
        r = strtol(v, &end, 10);
        if (*end == '\0' && r >= 0 && r < 1 << 20) {
            *var = local_rank_vars[i];
            return (int)r;
        }
    }
    return -1;
}

/* The accelerator of this process: index into t's list, -1 for none, -2 for a bad FX_DEVICE. */
static int pick_gpu(const struct fx_topo *t, const char *device, char *why, size_t len)
{
    const char *var = NULL;
    int n           = fx_topo_num_gpus(t);
    int lr;

    if (strcmp(device, "none") == 0) {
        snprintf(why, len, "FX_DEVICE=none");
        return -1;
    }
    if (device[0] != '\0') {
        int g = fx_topo_find_gpu(t, device);

        snprintf(why, len, "FX_DEVICE=%s", device);
        return g >= 0 ? g : -2;
    }
    lr = local_rank(&var);
    if (lr < 0 || n == 0) {
        snprintf(why, len, "%s", n == 0 ? "no accelerator on this host" : "no local rank");
        return -1;
    }
    snprintf(why, len, "%s=%d of %d accelerators", var, lr, n);
    return lr % n;
}

/* The interface rule of NIC n and of the NICs as near: their netdevs, when one of them carries
 * an address. */
static void nic_ifname(const struct fx_topo *t, int g, int n, char *out, size_t outlen)
{
    const struct fx_topo_dev *d = fx_topo_nic(t, n);
    struct sockaddr_storage addrs[4];
    char names[4][FX_TCP_IFNAME_LEN];
    char spec[256] = "=";
    size_t used    = 1;
    int naddrs     = 0;
    int nics       = 0;
    int near[FX_PLACE_MAX_NICS];
    int nnear;

    out[0] = '\0';
    nnear  = fx_topo_nics_as_near(t, g, n, near, FX_PLACE_MAX_NICS);
    for (int i = 0; i < nnear; i++) {
        const struct fx_topo_dev *e = fx_topo_nic(t, near[i]);

        nics += e->nnetdevs > 0;
        for (int k = 0; k < e->nnetdevs; k++) {
            int w = snprintf(spec + used, sizeof(spec) - used, "%s%s", used > 1 ? "," : "",
                             e->netdevs[k]);

            used = w > 0 && (size_t)w < sizeof(spec) - used ? used + (size_t)w : sizeof(spec) - 1;
        }
    }
    if (used > 1 && fx_tcp_iface_list(spec, addrs, names, 4, &naddrs) == FX_OK && naddrs > 0) {
        snprintf(out, outlen, "%s", spec);
        fx_info(FX_SUB_NET, "NIC %s (%s, NUMA node %d)%s: interfaces %s", d->name, d->pci, d->numa,
                nics > 1 ? " and the NICs as near" : "", spec + 1);
    } else {
        fx_info(FX_SUB_NET, "NIC %s (%s) has no usable interface address: default interface rules",
                d->name, d->pci);
    }
}

static void bind_near(const struct fx_topo *t, int n)
{
    char err[512];

    if (n < 0) {
        fx_warn(FX_SUB_INIT, "FX_BIND: this host has no NIC to bind near");
    } else if (fx_topo_bind_near_nic(t, n, err, sizeof(err)) != FX_OK) {
        fx_warn(FX_SUB_INIT, "FX_BIND: %s", err);
    } else {
        fx_info(FX_SUB_INIT, "FX_BIND: bound to CPUs %s, near NIC %s (NUMA node %d)",
                fx_topo_nic(t, n)->cpus, fx_topo_nic(t, n)->name, fx_topo_nic(t, n)->numa);
    }
}

/* Reads the topology and decides; place_lock held. */
static void decide(const struct fx_config *cfg)
{
    struct fx_topo *t = NULL;
    char why[128]     = "";
    char err[512];
    int g, n;

    place_unknown(&place_cached);
    place_ifname[0] = '\0';
    place_status    = FX_OK;
    if (fx_topo_load(&t, NULL, err, sizeof(err)) != FX_OK) {
        if (cfg->bind) {
            fx_warn(FX_SUB_INIT, "FX_BIND: no topology: %s", err);
        }
        fx_info(FX_SUB_INIT, "no topology (%s): place unknown, default interface rules", err);
        return;
    }
    g = pick_gpu(t, cfg->device, why, sizeof(why));
    if (g == -2) {
        char list[160] = "";
        size_t used    = 0;

        for (int i = 0; i < fx_topo_num_gpus(t) && used < sizeof(list); i++) {
            int w = snprintf(list + used, sizeof(list) - used, "%s%d %s", i ? ", " : "", i,
                             fx_topo_gpu(t, i)->pci);

            used = w > 0 ? used + (size_t)w : used;
        }
        snprintf(place_err, sizeof(place_err),
                 "FX_DEVICE=%s names no accelerator of this host (%d: %s)", cfg->device,
                 fx_topo_num_gpus(t), list[0] ? list : "none");
        place_status = FX_ERR_INVALID_ARG;
        fx_topo_free(t);
        return;
    }
    n = g >= 0 ? fx_topo_nearest_nic_to_gpu(t, g) : fx_topo_nearest_nic_to_cpus(t, NULL);
    place_cached.nnics = fx_topo_num_nics(t);
    place_cached.ngpus = fx_topo_num_gpus(t);
    if (g >= 0) {
        snprintf(place_cached.dev_pci, sizeof(place_cached.dev_pci), "%s", fx_topo_gpu(t, g)->pci);
    }
    if (n >= 0) {
        const struct fx_topo_dev *d = fx_topo_nic(t, n);

        snprintf(place_cached.nic, sizeof(place_cached.nic), "%.31s", d->name);
        snprintf(place_cached.nic_pci, sizeof(place_cached.nic_pci), "%s", d->pci);
        place_cached.numa     = d->numa;
        place_cached.nic_mbps = (uint32_t)(d->link_gbps * 1000.0f);
        place_cached.nic_ib   = d->kind == FX_NIC_IB;
        if (cfg->socket_ifname[0] == '\0') {
            nic_ifname(t, g, n, place_ifname, sizeof(place_ifname));
        }
    }
    if (g >= 0) {
        fx_info(FX_SUB_INIT, "accelerator %s (%s), nearest NIC %s (%s)", place_cached.dev_pci, why,
                n >= 0 ? place_cached.nic : "none",
                n >= 0 ? fx_topo_path_name(fx_topo_gpu_nic_path(t, g, n)) : "-");
    } else {
        fx_info(FX_SUB_INIT, "no accelerator (%s); NIC nearest to this process: %s", why,
                n >= 0 ? place_cached.nic : "none");
    }
    if (cfg->bind && !place_bound) {
        bind_near(t, n);
        place_bound = true;
    }
    fx_topo_free(t);
}

fx_status fx_place_process(const struct fx_config *cfg, struct fx_boot_place *place, char *ifname,
                           size_t ifnamelen, char *err, size_t errlen)
{
    const char *var = NULL;
    bool device     = (cfg->device[0] != '\0' && strcmp(cfg->device, "none") != 0) ||
                  (cfg->device[0] == '\0' && local_rank(&var) >= 0);
    bool need = cfg->bind || cfg->socket_ifname[0] == '\0' || device || getenv("FX_TOPO_FILE");
    fx_status status;

    ifname[0] = '\0';
    if (!need) {
        place_unknown(place);
        return FX_OK;
    }
    pthread_mutex_lock(&place_lock);
    if (!place_done || strcmp(place_device, cfg->device) != 0 || (cfg->bind && !place_bound) ||
        place_asked_ifname != (cfg->socket_ifname[0] == '\0')) {
        decide(cfg);
        snprintf(place_device, sizeof(place_device), "%s", cfg->device);
        place_asked_ifname = cfg->socket_ifname[0] == '\0';
        place_done         = true;
    }
    *place = place_cached;
    snprintf(ifname, ifnamelen, "%s", place_ifname);
    status = place_status;
    if (status != FX_OK) {
        snprintf(err, errlen, "%s", place_err);
    }
    pthread_mutex_unlock(&place_lock);
    return status;
}

void fx_place_describe(const struct fx_boot_place *p, char *buf, size_t len)
{
    if (p->nnics < 0) {
        snprintf(buf, len, "place unknown");
        return;
    }
    snprintf(buf, len, "%s%s%s%s%s (%s, NUMA node %d); host: %d NICs, %d accelerators",
             p->dev_pci[0] ? "accelerator " : "", p->dev_pci, p->dev_pci[0] ? ", " : "", "NIC ",
             p->nic[0] ? p->nic : "none", p->nic_ib ? "ib" : "ethernet", (int)p->numa,
             (int)p->nnics, (int)p->ngpus);
}
