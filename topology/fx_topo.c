/* Topology model over hwloc 2.x (see fx_topo.h and docs/topology.md). */
#include "fx_topo.h"

#include <ctype.h>
#include <errno.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEVS  256
#define MAX_DEPTH 64

struct fx_topo {
    hwloc_topology_t topo;
    bool live;
    int nnics;
    int ngpus;
    struct fx_topo_dev nics[MAX_DEVS];
    struct fx_topo_dev gpus[MAX_DEVS];
    hwloc_obj_t nic_obj[MAX_DEVS];
    hwloc_obj_t gpu_obj[MAX_DEVS];
};

/* ------------------------------------------------------------------ loading */

/* The XML format version in the file's <topology version="..."> (0 when absent: hwloc 1.x). */
static int xml_major_version(FILE *f, char *ver, size_t verlen)
{
    char head[4096];
    size_t n = fread(head, 1, sizeof(head) - 1, f);
    const char *t;
    const char *v;
    int major = 0;

    head[n] = '\0';
    snprintf(ver, verlen, "1.x");
    t = strstr(head, "<topology");
    if (t == NULL) {
        return -1;
    }
    v = strstr(t, "version=\"");
    if (v != NULL && v < strchr(t, '>')) {
        v += strlen("version=\"");
        major = atoi(v);
        snprintf(ver, verlen, "%.*s", (int)strcspn(v, "\""), v);
    }
    return major;
}

/* Checks that a file exists, reads as hwloc XML and has a version this hwloc can import. */
static fx_status check_xml(const char *path, char *err, size_t errlen)
{
    FILE *f      = fopen(path, "r");
    unsigned api = hwloc_get_api_version();
    char ver[32];
    int major;

    if (f == NULL) {
        snprintf(err, errlen, "topology file %s: %s", path, strerror(errno));
        return FX_ERR_INVALID_ARG;
    }
    major = xml_major_version(f, ver, sizeof(ver));
    fclose(f);
    if (major < 0) {
        snprintf(err, errlen,
                 "topology file %s is not an hwloc XML topology (no <topology> "
                 "element)",
                 path);
        return FX_ERR_INVALID_ARG;
    }
    if (major > 2) {
        snprintf(err, errlen,
                 "topology file %s has XML version %s, written by a newer hwloc; this build uses "
                 "hwloc %u.%u.%u, which reads versions up to 2 (export it with hwloc 2.x: "
                 "lstopo --of xml)",
                 path, ver, api >> 16, (api >> 8) & 0xff, api & 0xff);
        return FX_ERR_INVALID_ARG;
    }
    return FX_OK;
}

/* ------------------------------------------------------------------ devices */

static bool is_nic_class(uint16_t cls)
{
    return cls == 0x0200 || cls == 0x0207 || cls == 0x0c06;
}

static bool is_gpu_vendor(uint16_t vendor)
{
    return vendor == 0x10de || vendor == 0x1002 || vendor == 0x8086; /* NVIDIA, AMD, Intel */
}

/*
 * Accelerator by PCI class and vendor: 3D (0x0302), display (0x0380) and processing-accelerator
 * (0x1200) controllers of NVIDIA, AMD or Intel; a VGA controller (0x0300) only from NVIDIA,
 * since AMD and Intel VGA functions are mostly on-board graphics (a server's ATI ES1000, a
 * laptop's iGPU). Anything else counts when hwloc found a CUDA/OpenCL/NVML/RSMI device on it.
 */
static bool is_gpu_class(uint16_t cls, uint16_t vendor)
{
    if (!is_gpu_vendor(vendor)) {
        return false;
    }
    return cls == 0x0302 || cls == 0x0380 || cls == 0x1200 || (cls == 0x0300 && vendor == 0x10de);
}

/* An OS device that only an accelerator has: CUDA, OpenCL, ... co-processors, NVML/RSMI GPUs. */
static bool is_accel_osdev(hwloc_obj_t os)
{
    if (os->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC) {
        return true;
    }
    return os->attr->osdev.type == HWLOC_OBJ_OSDEV_GPU && os->name != NULL &&
           (strncmp(os->name, "nvml", 4) == 0 || strncmp(os->name, "rsmi", 4) == 0);
}

/* Rank of an accelerator OS device name for the device's display name; lower wins. */
static int gpu_name_rank(const char *name)
{
    static const char *const prefixes[] = {"cuda", "nvml", "rsmi", "opencl", "card"};

    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        if (strncmp(name, prefixes[i], strlen(prefixes[i])) == 0) {
            return (int)i;
        }
    }
    return 100;
}

static void fill_common(struct fx_topo *t, hwloc_obj_t pci, struct fx_topo_dev *d)
{
    hwloc_obj_t anc               = hwloc_get_non_io_ancestor_obj(t->topo, pci);
    const char *model             = hwloc_obj_get_info_by_name(pci, "PCIDevice");
    struct hwloc_pcidev_attr_s *a = &pci->attr->pcidev;

    snprintf(d->pci, sizeof(d->pci), "%04x:%02x:%02x.%x", a->domain, a->bus, a->dev, a->func);
    d->vendor    = a->vendor_id;
    d->device    = a->device_id;
    d->pci_class = a->class_id;
    d->link_gbps = a->linkspeed;
    snprintf(d->model, sizeof(d->model), "%s", model != NULL ? model : "");
    d->numa    = -1;
    d->cpus[0] = '\0';
    if (anc != NULL) {
        if (anc->nodeset != NULL && hwloc_bitmap_weight(anc->nodeset) == 1) {
            d->numa = hwloc_bitmap_first(anc->nodeset);
        }
        if (anc->cpuset != NULL) {
            hwloc_bitmap_list_snprintf(d->cpus, sizeof(d->cpus), anc->cpuset);
        }
    }
}

static void add_nic(struct fx_topo *t, hwloc_obj_t pci)
{
    struct fx_topo_dev *d;

    if (t->nnics >= MAX_DEVS) {
        return;
    }
    d = &t->nics[t->nnics];
    memset(d, 0, sizeof(*d));
    fill_common(t, pci, d);
    d->kind = pci->attr->pcidev.class_id == 0x0207 || pci->attr->pcidev.class_id == 0x0c06
                  ? FX_NIC_IB
                  : FX_NIC_ETHERNET;
    for (hwloc_obj_t c = pci->io_first_child; c != NULL; c = c->next_sibling) {
        if (c->type != HWLOC_OBJ_OS_DEVICE || c->name == NULL) {
            continue;
        }
        if (c->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS && d->rdma[0] == '\0') {
            snprintf(d->rdma, sizeof(d->rdma), "%s", c->name);
        } else if (c->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK &&
                   d->nnetdevs < FX_TOPO_MAX_NETDEVS) {
            snprintf(d->netdevs[d->nnetdevs++], FX_TOPO_NAME_LEN, "%s", c->name);
        }
    }
    if (d->rdma[0] != '\0') {
        memcpy(d->name, d->rdma, sizeof(d->name)); /* same size, NUL-terminated */
    } else if (d->nnetdevs > 0) {
        memcpy(d->name, d->netdevs[0], sizeof(d->name));
    } else {
        snprintf(d->name, sizeof(d->name), "%04x:%04x", d->vendor, d->device);
    }
    t->nic_obj[t->nnics++] = pci;
}

static void add_gpu(struct fx_topo *t, hwloc_obj_t pci)
{
    struct fx_topo_dev *d;
    int best = 1000;

    if (t->ngpus >= MAX_DEVS) {
        return;
    }
    d = &t->gpus[t->ngpus];
    memset(d, 0, sizeof(*d));
    fill_common(t, pci, d);
    snprintf(d->name, sizeof(d->name), "%04x:%04x", d->vendor, d->device);
    for (hwloc_obj_t c = pci->io_first_child; c != NULL; c = c->next_sibling) {
        if (c->type == HWLOC_OBJ_OS_DEVICE && c->name != NULL &&
            (c->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC ||
             c->attr->osdev.type == HWLOC_OBJ_OSDEV_GPU) &&
            gpu_name_rank(c->name) < best) {
            best = gpu_name_rank(c->name);
            snprintf(d->name, sizeof(d->name), "%s", c->name);
        }
    }
    t->gpu_obj[t->ngpus++] = pci;
}

/* Classifies one PCI device by class, vendor and the OS devices below it. */
static void classify(struct fx_topo *t, hwloc_obj_t pci)
{
    uint16_t cls  = pci->attr->pcidev.class_id;
    bool net_os   = false;
    bool accel_os = false;

    for (hwloc_obj_t c = pci->io_first_child; c != NULL; c = c->next_sibling) {
        if (c->type != HWLOC_OBJ_OS_DEVICE) {
            continue;
        }
        net_os |= c->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK ||
                  c->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS;
        accel_os |= is_accel_osdev(c);
    }
    if (is_nic_class(cls) || net_os) {
        add_nic(t, pci);
    } else if (is_gpu_class(cls, pci->attr->pcidev.vendor_id) || accel_os) {
        add_gpu(t, pci); /* a BMC's VGA (ASPEED, Matrox) has neither */
    }
}

/* Orders devices by PCI bus id, as nvidia-smi does (insertion sort: a handful of devices). */
static void sort_devs(struct fx_topo_dev *devs, hwloc_obj_t *objs, int n)
{
    for (int i = 1; i < n; i++) {
        for (int j = i; j > 0 && strcmp(devs[j - 1].pci, devs[j].pci) > 0; j--) {
            struct fx_topo_dev d = devs[j];
            hwloc_obj_t o        = objs[j];

            devs[j]     = devs[j - 1];
            objs[j]     = objs[j - 1];
            devs[j - 1] = d;
            objs[j - 1] = o;
        }
    }
}

fx_status fx_topo_load(struct fx_topo **out, const char *xml_path, char *err, size_t errlen)
{
    struct fx_topo *t;
    const char *path = xml_path != NULL ? xml_path : getenv("FX_TOPO_FILE");
    fx_status status;

    *out = NULL;
    if (path != NULL && path[0] == '\0') {
        path = NULL;
    }
    if (path != NULL && (status = check_xml(path, err, errlen)) != FX_OK) {
        return status;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory loading the topology");
        return FX_ERR_NO_MEMORY;
    }
    if (hwloc_topology_init(&t->topo) != 0) {
        snprintf(err, errlen, "hwloc_topology_init failed: %s", strerror(errno));
        free(t);
        return FX_ERR_SYSTEM;
    }
    hwloc_topology_set_io_types_filter(t->topo, HWLOC_TYPE_FILTER_KEEP_ALL);
    if (path != NULL && hwloc_topology_set_xml(t->topo, path) != 0) {
        snprintf(err, errlen, "hwloc cannot read topology file %s: %s", path, strerror(errno));
        hwloc_topology_destroy(t->topo);
        free(t);
        return FX_ERR_INVALID_ARG;
    }
    if (hwloc_topology_load(t->topo) != 0) {
        snprintf(err, errlen, "hwloc could not load %s: %s (a corrupt or truncated XML file?)",
                 path != NULL ? path : "this host's topology", strerror(errno));
        hwloc_topology_destroy(t->topo);
        free(t);
        return path != NULL ? FX_ERR_INVALID_ARG : FX_ERR_SYSTEM;
    }
    t->live = path == NULL && hwloc_topology_is_thissystem(t->topo);
    for (hwloc_obj_t p = hwloc_get_next_pcidev(t->topo, NULL); p != NULL;
         p             = hwloc_get_next_pcidev(t->topo, p)) {
        classify(t, p);
    }
    sort_devs(t->nics, t->nic_obj, t->nnics);
    sort_devs(t->gpus, t->gpu_obj, t->ngpus);
    *out = t;
    return FX_OK;
}

void fx_topo_free(struct fx_topo *t)
{
    if (t != NULL) {
        hwloc_topology_destroy(t->topo);
        free(t);
    }
}

bool fx_topo_is_live(const struct fx_topo *t)
{
    return t->live;
}

int fx_topo_num_numa(const struct fx_topo *t)
{
    return hwloc_get_nbobjs_by_type(t->topo, HWLOC_OBJ_NUMANODE);
}

int fx_topo_num_nics(const struct fx_topo *t)
{
    return t->nnics;
}

int fx_topo_num_gpus(const struct fx_topo *t)
{
    return t->ngpus;
}

const struct fx_topo_dev *fx_topo_nic(const struct fx_topo *t, int i)
{
    return i >= 0 && i < t->nnics ? &t->nics[i] : NULL;
}

const struct fx_topo_dev *fx_topo_gpu(const struct fx_topo *t, int i)
{
    return i >= 0 && i < t->ngpus ? &t->gpus[i] : NULL;
}

/* ------------------------------------------------------------------ paths */

const char *fx_topo_path_name(enum fx_topo_path p)
{
    static const char *const names[] = {"PIX", "PXB", "PHB", "NODE", "SYS"};

    return (unsigned)p < 5 ? names[p] : "?";
}

static bool is_host_bridge(hwloc_obj_t o)
{
    return o->type == HWLOC_OBJ_BRIDGE && o->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_HOST;
}

/* PCI bridges strictly between obj and its ancestor anc. */
static int bridges_below(hwloc_obj_t obj, hwloc_obj_t anc)
{
    int n = 0;

    for (hwloc_obj_t o = obj->parent; o != NULL && o != anc; o = o->parent) {
        n += o->type == HWLOC_OBJ_BRIDGE;
    }
    return n;
}

static enum fx_topo_path path_between(const struct fx_topo *t, hwloc_obj_t a, hwloc_obj_t b)
{
    hwloc_obj_t up[MAX_DEPTH];
    hwloc_obj_t common = NULL;
    hwloc_obj_t na;
    hwloc_obj_t nb;
    int n = 0;

    for (hwloc_obj_t o = a; o != NULL && n < MAX_DEPTH; o = o->parent) {
        up[n++] = o;
    }
    for (hwloc_obj_t o = b; o != NULL && common == NULL; o = o->parent) {
        for (int i = 0; i < n; i++) {
            if (up[i] == o) {
                common = o;
                break;
            }
        }
    }
    if (common != NULL && common->type == HWLOC_OBJ_BRIDGE) {
        if (is_host_bridge(common)) {
            return FX_PATH_PHB;
        }
        return bridges_below(a, common) <= 1 && bridges_below(b, common) <= 1 ? FX_PATH_PIX
                                                                              : FX_PATH_PXB;
    }
    if (common != NULL && common->type == HWLOC_OBJ_PCI_DEVICE) {
        return FX_PATH_PIX; /* one is below the other (a function of the same card) */
    }
    na = hwloc_get_non_io_ancestor_obj(t->topo, a);
    nb = hwloc_get_non_io_ancestor_obj(t->topo, b);
    if (na != NULL && nb != NULL && na->nodeset != NULL && nb->nodeset != NULL &&
        hwloc_bitmap_isequal(na->nodeset, nb->nodeset)) {
        return FX_PATH_NODE;
    }
    return FX_PATH_SYS;
}

int fx_topo_find_gpu(const struct fx_topo *t, const char *spec)
{
    char want[FX_TOPO_PCI_LEN];
    char *end;
    long idx;
    size_t n = strlen(spec);

    if (n == 0 || n >= sizeof(want)) {
        return -1;
    }
    idx = strtol(spec, &end, 10);
    if (*end == '\0') {
        return idx >= 0 && idx < t->ngpus ? (int)idx : -1;
    }
    for (size_t i = 0; i <= n; i++) {
        want[i] = (char)tolower((unsigned char)spec[i]);
    }
    for (int g = 0; g < t->ngpus; g++) {
        size_t len = strlen(t->gpus[g].pci);

        if (strcmp(t->gpus[g].pci, want) == 0 ||
            (n == 7 && len == 12 && strcmp(t->gpus[g].pci + 5, want) == 0)) {
            return g;
        }
    }
    return -1;
}

enum fx_topo_path fx_topo_gpu_nic_path(const struct fx_topo *t, int g, int n)
{
    return path_between(t, t->gpu_obj[g], t->nic_obj[n]);
}

/* Tie-break between NICs at the same distance: RDMA first, faster link, lower bus id.
 * Returns true when NIC i beats NIC j. */
static bool nic_better(const struct fx_topo *t, int i, int j)
{
    const struct fx_topo_dev *a = &t->nics[i];
    const struct fx_topo_dev *b = &t->nics[j];
    bool ra                     = a->rdma[0] != '\0';
    bool rb                     = b->rdma[0] != '\0';

    if (ra != rb) {
        return ra;
    }
    if (a->link_gbps != b->link_gbps) {
        return a->link_gbps > b->link_gbps;
    }
    return strcmp(a->pci, b->pci) < 0;
}

int fx_topo_nearest_nic_to_gpu(const struct fx_topo *t, int g)
{
    int best                = -1;
    enum fx_topo_path bestp = FX_PATH_SYS;

    if (g < 0 || g >= t->ngpus) {
        return -1;
    }
    for (int n = 0; n < t->nnics; n++) {
        enum fx_topo_path p = fx_topo_gpu_nic_path(t, g, n);

        if (best < 0 || p < bestp || (p == bestp && nic_better(t, n, best))) {
            best  = n;
            bestp = p;
        }
    }
    return best;
}

int fx_topo_nearest_nic_to_cpus(const struct fx_topo *t, const char *cpulist)
{
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    int best           = -1;
    bool best_local    = false;

    if (set == NULL) {
        return -1;
    }
    if (cpulist != NULL) {
        if (hwloc_bitmap_list_sscanf(set, cpulist) != 0) {
            hwloc_bitmap_free(set);
            return -1;
        }
    } else if (!t->live || hwloc_get_cpubind(t->topo, set, HWLOC_CPUBIND_PROCESS) != 0) {
        hwloc_bitmap_copy(set, hwloc_topology_get_complete_cpuset(t->topo));
    }
    for (int n = 0; n < t->nnics; n++) {
        hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t->topo, t->nic_obj[n]);
        bool local =
            anc != NULL && anc->cpuset != NULL && hwloc_bitmap_intersects(anc->cpuset, set);

        if (best < 0 || (local && !best_local) || (local == best_local && nic_better(t, n, best))) {
            best       = n;
            best_local = local;
        }
    }
    hwloc_bitmap_free(set);
    return best;
}

int fx_topo_nics_as_near(const struct fx_topo *t, int g, int n, int *out, int max)
{
    const struct fx_topo_dev *a;
    int k = 0;

    if (n < 0 || n >= t->nnics || max < 1) {
        return 0;
    }
    a        = &t->nics[n];
    out[k++] = n;
    for (int m = 0; m < t->nnics && k < max; m++) {
        const struct fx_topo_dev *b = &t->nics[m];
        bool near;

        if (m == n || a->kind != b->kind || a->link_gbps != b->link_gbps || b->nnetdevs == 0) {
            continue;
        }
        near = g >= 0 && g < t->ngpus
                   ? fx_topo_gpu_nic_path(t, g, n) == fx_topo_gpu_nic_path(t, g, m)
                   : a->numa == b->numa;
        if (near) {
            out[k++] = m;
        }
    }
    return k;
}

fx_status fx_topo_bind_near_nic(const struct fx_topo *t, int n, char *err, size_t errlen)
{
    hwloc_obj_t anc;

    if (!t->live) {
        snprintf(err, errlen, "not binding: the topology was read from a file, not this host");
        return FX_ERR_INVALID_ARG;
    }
    if (n < 0 || n >= t->nnics) {
        snprintf(err, errlen, "not binding: no NIC %d (the host has %d)", n, t->nnics);
        return FX_ERR_INVALID_ARG;
    }
    anc = hwloc_get_non_io_ancestor_obj(t->topo, t->nic_obj[n]);
    if (anc == NULL || anc->cpuset == NULL ||
        hwloc_set_cpubind(t->topo, anc->cpuset, HWLOC_CPUBIND_PROCESS) != 0) {
        snprintf(err, errlen, "binding to the CPUs near %s failed: %s", t->nics[n].name,
                 strerror(errno));
        return FX_ERR_SYSTEM;
    }
    return FX_OK;
}
