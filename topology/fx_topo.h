/*
 * Topology: a small model of one host, read with hwloc 2.x from the live machine or from a
 * recorded XML file (docs/topology.md).
 *
 * The model keeps NUMA nodes, NICs (Ethernet and RDMA) and accelerators with their PCI bus ids,
 * names and NUMA node, and answers what the library and fx-topo need: the PCI path class
 * between two devices (nvidia-smi's PIX, PXB, PHB, NODE, SYS), the nearest NIC to an accelerator
 * or to the calling process's CPU binding, and each device's CPU list.
 *
 * hwloc drops I/O objects by default, from XML too: the loader keeps them. A topology read from
 * XML describes another machine: it is never used to bind. Paths are computed by walking parent
 * pointers (hwloc_get_common_ancestor_obj() compares depths, which are negative for I/O
 * objects, and crashes on them in hwloc 2.9).
 */
#ifndef FX_TOPO_H
#define FX_TOPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

#define FX_TOPO_PCI_LEN     16 /* "dddd:bb:dd.f" */
#define FX_TOPO_NAME_LEN    64
#define FX_TOPO_MAX_NETDEVS 4

/* PCI path classes, nearest first (the order of nvidia-smi topo -m's legend). */
enum fx_topo_path {
    FX_PATH_PIX  = 0, /* at most one PCIe bridge or switch between them */
    FX_PATH_PXB  = 1, /* several bridges, but no host bridge */
    FX_PATH_PHB  = 2, /* through a PCIe host bridge */
    FX_PATH_NODE = 3, /* same NUMA node, different host bridges */
    FX_PATH_SYS  = 4, /* across NUMA nodes (the inter-socket or inter-die link) */
};

enum fx_topo_nic_kind {
    FX_NIC_ETHERNET = 0,
    FX_NIC_IB       = 1, /* InfiniBand: PCI class 0x0207 or 0x0c06 */
};

/* One NIC or accelerator. */
struct fx_topo_dev {
    char pci[FX_TOPO_PCI_LEN];    /* lowercase "0000:07:00.0"; empty without a PCI device */
    char name[FX_TOPO_NAME_LEN];  /* NIC: RDMA name (mlx5_0) or first netdev; GPU: OS name
                                     (cuda0, nvml0, card0, ...) or "vendor:device" */
    char model[FX_TOPO_NAME_LEN]; /* hwloc's PCI device name when recorded, else empty */
    uint16_t vendor;
    uint16_t device;
    uint16_t pci_class;
    int numa;        /* OS index of its NUMA node; -1 when it is local to several or none */
    char cpus[256];  /* CPUs near it, as a list ("0-15,64-79") */
    float link_gbps; /* PCI link, GB/s as hwloc reports it; 0 unknown */
    /* NICs only */
    enum fx_topo_nic_kind kind;
    char rdma[FX_TOPO_NAME_LEN]; /* OpenFabrics device (mlx5_0); empty if none */
    char netdevs[FX_TOPO_MAX_NETDEVS][FX_TOPO_NAME_LEN];
    int nnetdevs;
};

struct fx_topo;

/*
 * Loads a topology: the XML file `xml_path` when not NULL, else the file named by FX_TOPO_FILE
 * when set, else the live host. On failure returns FX_ERR_INVALID_ARG (a missing, unreadable or
 * corrupt file, or an XML version this hwloc cannot read, with both versions named) or
 * FX_ERR_SYSTEM, and err says why.
 */
fx_status fx_topo_load(struct fx_topo **out, const char *xml_path, char *err, size_t errlen);
void fx_topo_free(struct fx_topo *t);

/* True when the topology is the live host (bindings may use it). */
bool fx_topo_is_live(const struct fx_topo *t);

int fx_topo_num_numa(const struct fx_topo *t);
int fx_topo_num_nics(const struct fx_topo *t);
int fx_topo_num_gpus(const struct fx_topo *t);
const struct fx_topo_dev *fx_topo_nic(const struct fx_topo *t, int i);
const struct fx_topo_dev *fx_topo_gpu(const struct fx_topo *t, int i);

/*
 * The accelerator a spec names: its index in the list above (which is in PCI bus id order, as
 * CUDA_DEVICE_ORDER=PCI_BUS_ID numbers them), or its PCI bus id, whole ("0000:07:00.0") or
 * without the domain ("07:00.0"), any case. -1 when none matches.
 */
int fx_topo_find_gpu(const struct fx_topo *t, const char *spec);

/* The path class between GPU g and NIC n (indices into the lists above). */
enum fx_topo_path fx_topo_gpu_nic_path(const struct fx_topo *t, int g, int n);
/* "PIX", "PXB", "PHB", "NODE" or "SYS". */
const char *fx_topo_path_name(enum fx_topo_path p);

/*
 * The nearest NIC to GPU g: the smallest path class, RDMA NICs before Ethernet ones at equal
 * class, then the faster PCI link, then the lower bus id. -1 when the host has no NIC.
 */
int fx_topo_nearest_nic_to_gpu(const struct fx_topo *t, int g);

/*
 * The nearest NIC to a set of CPUs (a list like "0-3,8"; NULL: the calling process's binding on
 * a live topology, else every CPU): NICs on a NUMA node that holds those CPUs first, then by
 * kind, link and bus id as above. -1 when the host has no NIC.
 */
int fx_topo_nearest_nic_to_cpus(const struct fx_topo *t, const char *cpulist);

/*
 * NIC n and the NICs as near as it, n first, at most max of them in out: the same kind and PCI
 * link, and the same path class to accelerator g (g < 0: on the same NUMA node), each with a
 * network interface. Returns how many. The TCP transport spreads a connection's sockets over the
 * interfaces of all of them.
 */
int fx_topo_nics_as_near(const struct fx_topo *t, int g, int n, int *out, int max);

/*
 * Binds the calling process (all its threads) to the CPUs of NIC n's NUMA locality. Only on the
 * live host: a recorded topology describes another machine (FX_ERR_INVALID_ARG). FX_ERR_SYSTEM
 * when the kernel refuses; err says why.
 */
fx_status fx_topo_bind_near_nic(const struct fx_topo *t, int n, char *err, size_t errlen);

#endif /* FX_TOPO_H */
