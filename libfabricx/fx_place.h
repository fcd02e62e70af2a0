/*
 * Where this process runs (docs/topology.md): its accelerator, the NIC it uses, FX_BIND's
 * binding, and the interface rule that NIC gives the TCP transport, decided from the topology
 * (the live host, or FX_TOPO_FILE) once per process and described in the rank's bootstrap record
 * (struct fx_boot_place), so that every rank learns where the others sit.
 *
 * The accelerator: FX_DEVICE (an index in the host's accelerator list, in PCI order, or a PCI
 * bus id); unset, the launcher's local rank (LOCAL_RANK, SLURM_LOCALID,
 * OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID) modulo the host's accelerator count; "none": no
 * accelerator. The NIC: the nearest to the accelerator when there is one, else the nearest to
 * the process's CPUs.
 *
 * The topology is read (a few tens of ms) only when something uses it: FX_BIND, no
 * FX_SOCKET_IFNAME, an accelerator asked for (FX_DEVICE or a local rank), or FX_TOPO_FILE.
 * Otherwise the place is unknown (empty names, -1 counts).
 */
#ifndef FX_PLACE_H
#define FX_PLACE_H

#include "fx_boot.h"
#include "fx_config.h"

/*
 * Fills *place and writes the interface rule the topology suggests to ifname ("" when it has
 * none: the transport's default rules, or FX_SOCKET_IFNAME). FX_OK, or FX_ERR_INVALID_ARG when
 * FX_DEVICE names no accelerator of this host (err says which exist).
 */
fx_status fx_place_process(const struct fx_config *cfg, struct fx_boot_place *place, char *ifname,
                           size_t ifnamelen, char *err, size_t errlen);

/* "accelerator 0000:07:00.0, NIC mlx5_0 (ib, NUMA node 3)" or "place unknown". */
void fx_place_describe(const struct fx_boot_place *place, char *buf, size_t len);

#endif /* FX_PLACE_H */
