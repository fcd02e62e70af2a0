/*
 * The cost model's parameters of a communicator: measured at init on the ring (the latency of
 * an 8-byte exchange with the ring neighbours, the bandwidth of a 1 MiB one, the speed of a
 * 1 MiB fp32 sum), replaced by FX_TUNE_LATENCY_NS, FX_TUNE_LINK_MBPS and FX_TUNE_REDUCE_MBPS
 * where set, then the largest of every rank's taken by all, so that all ranks choose alike and
 * by the job's slowest link. A few milliseconds at init.
 */
#ifndef FX_TUNE_H
#define FX_TUNE_H

#include "fx_comm.h"

/* Fills comm->tune; the executor must be running. FX_OK or the error of an exchange. */
fx_status fx_tune_measure(struct fx_comm *comm, char *err, size_t errlen);

#endif /* FX_TUNE_H */
