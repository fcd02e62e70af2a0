/*
 * Per-peer link statistics and the job's slow-link monitor (docs/linkstats.md).
 *
 * The executor counts, for each peer and direction, the bytes and messages that completed and
 * the time during which at least one message to (from) the peer was posted and not complete
 * (for sends: data queued that the link does not drain). Once a second each direction's window
 * becomes a rate sample and the rate is the median of the last FX_LINK_SAMPLES samples. Where
 * the transport sees the wire (conn_stats; TCP) the samples come from it: for receives the
 * arrival rate of large messages while they arrive, for sends the bytes acknowledged over the
 * kernel's busy time. Otherwise they come from the executor's busy stretches that moved at
 * least RATE_MIN_BYTES (or lasted 10 ms): bytes over busy time.
 *
 * Every rank sends rank 0 its receive rates (two samples or more, the last one under five
 * seconds old, each with its sample count) over the control plane once a second. The receiver's
 * measure, because in a pipelined ring every link carries the slowest one's rate on average and
 * a sender's measure also sees back-pressure from a slow link further on. Rank 0 keeps the last
 * report of each rank, analyses the links between distinct hosts reported in the last few
 * seconds (fx_slow.h) as soon as the reports of a round are in (fx_links_eval_due) and logs at
 * INFO what is slow, a host or a path, with ranks, hosts, addresses, the measured rate and the
 * median (log_due: after a streak of evaluations over rates of three samples or more, then at
 * most every LOG_EVERY_MS; a host whose every link is far below the rest, on one evaluation
 * over rates of two samples or more).
 *
 * All of it runs under the communicator's lock.
 */
#ifndef FX_LINKS_H
#define FX_LINKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "fabricx.h"
#include "fx_boot.h"

#define FX_LINK_ADDR_LEN    48
#define FX_LINK_TICK_MS     1000
#define FX_LINK_SAMPLES     5  /* the rate is the median of the last samples */
#define FX_LINK_REPORT_MAX  15 /* links per report: fits one control frame */
#define FX_LINK_REPORT_SIZE (4 + FX_LINK_REPORT_MAX * (16 + FX_LINK_ADDR_LEN))

enum { FX_LINK_SEND = 0, FX_LINK_RECV = 1 };

/* One direction of the traffic with one peer. */
struct fx_link_dir {
    uint64_t bytes;
    uint64_t msgs;
    uint64_t blocked_ns; /* time with messages posted and not complete */
    int64_t busy_since;  /* ns; while posted > 0, on the clock `coarse` names */
    uint32_t posted;
    bool coarse;          /* the current busy stretch is timed with the coarse clock */
    uint64_t span_posted; /* posted in it while it was on the coarse clock */
    uint64_t span_bytes;  /* completed in the current busy stretch */
    uint64_t win_bytes;   /* rate window */
    uint64_t win_ns;
    bool wire;           /* the transport reports wire counters (sends only) */
    uint64_t wire_bytes; /* latest cumulative: bytes acknowledged, time busy on the wire */
    uint64_t wire_ns;
    uint64_t wire_bytes0; /* ... when the rate last took a sample */
    uint64_t wire_ns0;
    uint64_t wire_msgs; /* msgs at the last reading */
    double rate;        /* smoothed, bytes per second; 0: not measured yet */
    int64_t rate_ms;    /* when rate last took a sample */
    uint32_t samples;
    double hist[FX_LINK_SAMPLES]; /* the last samples, bytes per second */
};

/* Rank 0: one link of a rank's last report: from peer to the reporting rank. */
struct fx_link_rep {
    int32_t peer;
    uint32_t samples; /* the rate is the median of this many (up to FX_LINK_SAMPLES) */
    double rate;
    int64_t ms; /* when it arrived; 0: empty */
    char addr[FX_LINK_ADDR_LEN];
};

/* Rank 0: a finding of recent evaluations (fx_links.c, log_due). */
struct fx_link_logged {
    int kind;
    int a, b;
    uint64_t round;  /* the last evaluation that found it; 0: free slot */
    uint32_t streak; /* evaluations in a row that found it */
    int64_t ms;      /* when it was last logged; 0: never */
};

struct fx_links {
    bool on;
    int rank;
    int nranks;
    struct fx_link_dir (*dir)[2];   /* [nranks][FX_LINK_SEND / FX_LINK_RECV] */
    char (*addr)[FX_LINK_ADDR_LEN]; /* [nranks]: peer's data-plane address; "" unknown */
    int64_t next_tick_ms;
    uint32_t polls; /* progress polls without a clock reading (fx_exec.c, links_tick_due) */
    /* rank 0 */
    int *host_of; /* [nranks]: host index */
    int nhosts;
    struct fx_link_rep *reps; /* [nranks][FX_LINK_REPORT_MAX] */
    int64_t *rep_ms;          /* [nranks]: when the rank's last report arrived; 0: never */
    int64_t *rep_sorted;      /* [nranks]: scratch of fx_links_eval_due */
    int64_t eval_ms;          /* when the last evaluation ran; 0: never */
    struct fx_link_logged logged[16];
    uint64_t rounds; /* evaluations so far */
};

/* Busy stretches are timed with the coarse clock until the messages posted in them add up to
 * this. */
#define FX_LINK_FINE_BYTES (64u << 10)

#ifdef CLOCK_MONOTONIC_COARSE
#define FX_LINK_COARSE_CLOCK CLOCK_MONOTONIC_COARSE
#else
#define FX_LINK_COARSE_CLOCK CLOCK_MONOTONIC
#endif

/*
 * The clocks of the busy stretches, each read at most once per progress round (0: not read
 * yet). A stretch of small messages lasts about as long as one clock_gettime(CLOCK_MONOTONIC)
 * pair costs (two reads were about 12% of an 8-byte shared-memory all-reduce), so it is timed
 * with CLOCK_MONOTONIC_COARSE: a fraction of the cost, a resolution of one kernel tick (1-10
 * ms). A stretch then counts a whole tick when one passes inside it and nothing otherwise, which
 * sums to the right blocked time over many stretches but is no time to make a rate of: a stretch
 * on the coarse clock feeds no rate window. Once the messages posted in a stretch add up to
 * FX_LINK_FINE_BYTES (the least a stretch needs to feed a rate), it is timed with
 * CLOCK_MONOTONIC from that post on. Both clocks run on the same scale (the coarse one lags by
 * under a tick); a difference is only ever taken between two readings of one clock.
 */
struct fx_link_clock {
    int64_t fine;
    int64_t coarse;
};

static inline int64_t fx_link_clock_get(struct fx_link_clock *c, bool coarse)
{
    int64_t *t = coarse ? &c->coarse : &c->fine;

    if (*t == 0) {
        struct timespec ts;

        /* a kernel without the coarse clock: the fine one, on the same scale */
        if (!coarse || clock_gettime(FX_LINK_COARSE_CLOCK, &ts) != 0) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
        }
        *t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    return *t;
}

void fx_link_span_end(struct fx_link_dir *d, int64_t now_ns);
void fx_link_span_refine(struct fx_link_dir *d, struct fx_link_clock *clk);

/* A message of `bytes` payload to (from) the peer was posted. */
static inline void fx_link_posted(struct fx_link_dir *d, size_t bytes, struct fx_link_clock *clk)
{
    if (d->posted++ == 0) {
        d->span_posted = bytes;
        d->coarse      = bytes < FX_LINK_FINE_BYTES;
        d->busy_since  = fx_link_clock_get(clk, d->coarse);
        d->span_bytes  = 0;
    } else if (d->coarse) {
        d->span_posted += bytes;
        if (d->span_posted >= FX_LINK_FINE_BYTES) {
            fx_link_span_refine(d, clk);
        }
    }
}

/* A posted message of `bytes` payload completed. */
static inline void fx_link_completed(struct fx_link_dir *d, size_t bytes, struct fx_link_clock *clk)
{
    d->bytes += bytes;
    d->msgs++;
    d->span_bytes += bytes;
    if (d->posted > 0 && --d->posted == 0) {
        fx_link_span_end(d, fx_link_clock_get(clk, d->coarse));
    }
}

/*
 * Sets up the statistics of a communicator; host_of[r] is rank r's host index (0..nhosts-1),
 * needed on rank 0 only. With on false nothing is counted and every call is cheap.
 */
fx_status fx_links_init(struct fx_links *L, bool on, int rank, int nranks, const int *host_of,
                        int nhosts);
void fx_links_fini(struct fx_links *L);

/* The operations in flight failed and will not complete: every open busy stretch ends now, so
 * the blocked times stop growing. */
void fx_links_stop(struct fx_links *L);

/* The wire counters of the connection to (from) peer (fx_tp_conn_stats), read before a tick:
 * for sends the bytes acknowledged and the busy time, for receives the bytes of large messages
 * and the time from their first byte to their last. Traffic before the first reading is set-up.
 * Receives are read at every tick, and while none is posted and none completed since the last
 * reading the reading is the base: a window starts at the last tick before the traffic, so its
 * first second makes a sample. */
static inline void fx_link_wire(struct fx_links *L, int peer, int dir, uint64_t bytes, uint64_t ns)
{
    struct fx_link_dir *d = &L->dir[peer][dir];

    if (!d->wire || (dir == FX_LINK_RECV && d->posted == 0 && d->msgs == d->wire_msgs)) {
        d->wire_bytes0 = bytes;
        d->wire_ns0    = ns;
    }
    d->wire_msgs  = d->msgs;
    d->wire       = true;
    d->wire_bytes = bytes;
    d->wire_ns    = ns;
}

/*
 * Closes the rate windows (once per FX_LINK_TICK_MS; returns 0 before that) and writes the
 * report of current receive rates to report (FX_LINK_REPORT_SIZE bytes). Returns its length, 0 when
 * nothing is fresh. *due tells whether the tick happened.
 */
size_t fx_links_tick(struct fx_links *L, int64_t now_ms, uint8_t *report, bool *due);

/* Rank 0: stores rank src's report. Malformed reports are ignored. */
void fx_links_on_report(struct fx_links *L, int src, const uint8_t *report, size_t len,
                        int64_t now_ms);

/*
 * Rank 0: whether an evaluation is due. The other ranks report once a tick, each on its own
 * phase; a round is in when the report that came last is followed by the longest spell
 * without reports (that of the earliest rank's next one), and at least half a tick passed
 * since the last evaluation: rank 0 judges each round's rates as they arrive rather than on its
 * own phase. At rank 0's own tick (tick true) it is also due once 1.5 ticks passed since the
 * last evaluation and a report came since: a late or silent rank delays it no further.
 */
bool fx_links_eval_due(struct fx_links *L, int64_t now_ms, bool tick);

/* Rank 0: analyses the recent reports and logs what is slow. Returns the number of findings. */
int fx_links_evaluate(struct fx_links *L, const struct fx_boot *boot, int64_t now_ms);

/* Fills the counters, rates and address of the link to peer (the caller names its transport
 * and host). Open busy stretches count up to now. */
void fx_links_snapshot(const struct fx_links *L, int peer, struct fx_link_clock *now,
                       fx_link_stats *out);

#endif /* FX_LINKS_H */
