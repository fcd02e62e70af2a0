/*
 * fx_comm_split: sub-communicators. Two all-gathers on the parent: first every rank's (color,
 * key), from which each rank works out its group, its rank in it (by key, then parent rank) and
 * the group's first member, the leader; then every leader's fresh unique id, which its group
 * joins with fx_comm_init_rank. A rank passing an invalid color still takes part in both
 * all-gathers, so every rank fails with the same message instead of waiting for it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fabricx.h"
#include "fx_comm.h"
#include "fx_log.h"
#include "fx_status_int.h"

/* One rank's part of the id all-gather: a leader's id, or nothing. */
struct split_id {
    uint8_t have; /* 1: id holds the leader's unique id; 2: the leader failed to make one */
    uint8_t pad[7];
    fx_unique_id id;
};

struct split_member {
    int64_t key;
    int rank; /* in the parent */
};

static int cmp_member(const void *a, const void *b)
{
    const struct split_member *x = a;
    const struct split_member *y = b;

    if (x->key != y->key) {
        return x->key < y->key ? -1 : 1;
    }
    return (x->rank > y->rank) - (x->rank < y->rank);
}

/* The first rank whose color is invalid, or -1. */
static int first_bad_color(const int64_t *all, int n)
{
    for (int r = 0; r < n; r++) {
        if (all[2 * r] < FX_SPLIT_NOCOLOR || all[2 * r] > INT32_MAX) {
            return r;
        }
    }
    return -1;
}

/* Members of `color` sorted by (key, parent rank) into m; returns their number. */
static int group_of(const int64_t *all, int n, int64_t color, struct split_member *m)
{
    int size = 0;

    for (int r = 0; r < n; r++) {
        if (all[2 * r] == color) {
            m[size++] = (struct split_member){all[2 * r + 1], r};
        }
    }
    qsort(m, (size_t)size, sizeof(*m), cmp_member);
    return size;
}

/* Both all-gathers and the join; *newcomm is set only on success. */
static fx_status split(struct fx_comm *comm, int color, int key, fx_comm_t *newcomm, int64_t *all,
                       struct split_member *m, struct split_id *ids)
{
    int n           = comm->nranks;
    int64_t mine[2] = {color, key};
    struct split_id own;
    int size;
    int me = -1;
    int bad;
    fx_status status = fx_allgather(mine, all, 2, FX_INT64, comm);

    if (status != FX_OK) {
        return status;
    }
    bad  = first_bad_color(all, n);
    size = bad < 0 && color != FX_SPLIT_NOCOLOR ? group_of(all, n, color, m) : 0;
    for (int i = 0; i < size; i++) {
        me = m[i].rank == comm->rank ? i : me;
    }
    memset(&own, 0, sizeof(own));
    if (size > 0 && me == 0) {
        own.have = fx_get_unique_id(&own.id) == FX_OK ? 1 : 2;
    }
    status = fx_allgather(&own, ids, sizeof(own), FX_UINT8, comm);
    if (status != FX_OK) {
        return status;
    }
    if (bad >= 0) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "fx_comm_split: rank %d passed color %lld (a color is 0 or more, "
                                  "or FX_SPLIT_NOCOLOR)",
                                  bad, (long long)all[2 * bad]);
    }
    if (size == 0) {
        return FX_OK; /* FX_SPLIT_NOCOLOR: no new communicator */
    }
    if (ids[m[0].rank].have != 1) {
        return fx_comm_note_error(comm, FX_ERR_CONNECTION,
                                  "fx_comm_split: rank %d, rank 0 of the new communicator of color "
                                  "%d, could not create its unique id",
                                  m[0].rank, color);
    }
    fx_info(FX_SUB_INIT, "split: color %d, rank %d of %d (parent rank %d leads)", color, me, size,
            m[0].rank);
    status = fx_comm_init_rank(newcomm, size, ids[m[0].rank].id, me);
    if (status != FX_OK) {
        return fx_comm_note_error(comm, status, "fx_comm_split: joining the new communicator: %s",
                                  fx_last_error());
    }
    return FX_OK;
}

FX_API fx_status fx_comm_split(fx_comm_t comm, int color, int key, fx_comm_t *newcomm)
{
    int64_t *all;
    struct split_member *m;
    struct split_id *ids;
    fx_status status;

    if (comm == NULL || newcomm == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_comm_split: %s is NULL",
                                 comm == NULL ? "comm" : "newcomm");
    }
    *newcomm = NULL;
    all      = calloc((size_t)comm->nranks, 2 * sizeof(*all));
    m        = calloc((size_t)comm->nranks, sizeof(*m));
    ids      = calloc((size_t)comm->nranks, sizeof(*ids));
    if (all == NULL || m == NULL || ids == NULL) {
        status = fx_comm_note_error(comm, FX_ERR_NO_MEMORY, "fx_comm_split: out of memory");
    } else {
        status = split(comm, color, key, newcomm, all, m, ids);
    }
    free(all);
    free(m);
    free(ids);
    return status;
}
