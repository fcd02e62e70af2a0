/*
 * Waiting for operations (fx_exec.h): the thread that waits drives progress itself, spinning
 * for FX_SPIN_US before it sleeps on the communicator's epoll set (the transports' wait fds, the
 * control plane, a wake-up eventfd); the progress thread drives the operations nobody waits for
 * and reads the control plane while the rank is idle.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "fx_exec.h"
#include "fx_log.h"
#include "fx_sock.h"

#define EV_TP            1u
#define EV_WAKE          2u
#define EV_CTRL          3u
#define MAX_EVENTS       16
#define IDLE_WAIT_MS     500
#define DRIVE_WAIT_MS    100
#define IDLE_TICK_MS     200
#define SPIN_CLOCK_EVERY 8u /* spin rounds between two looks at the clock */
#define CONN_POLL_MS     1  /* sleeps while a lane waits for its connection: at first */
#define CONN_POLL_MAX_MS 50 /* ... and at most, after a long wait */

/* Sorts epoll results: the control plane is read here; the transport is read by progress. */
static void handle_events(struct fx_comm *comm, const struct epoll_event *evs, int n)
{
    bool ctrl = false;

    for (int i = 0; i < n; i++) {
        if (evs[i].data.u32 == EV_WAKE) {
            uint64_t v;

            if (read(comm->wakefd, &v, sizeof(v)) < 0) {
                /* Another thread drained it first. */
            }
        } else if (evs[i].data.u32 == EV_CTRL) {
            ctrl = true;
        }
    }
    if (ctrl) {
        fx_exec_drain_control(comm);
    }
}

/* Before sleeping on the epoll set: lets the transport arrange its wake-ups; false when it can
 * move already (then do not sleep). Called with the lock held. */
static bool transport_may_sleep(struct fx_comm *comm)
{
    for (int t = 0; t < comm->ntps; t++) {
        const struct fx_comm_tp *ct = &comm->tps[t];

        if (ct->ops->prepare_wait != NULL && ct->ops->prepare_wait(ct->tp)) {
            return false;
        }
    }
    return true;
}

/*
 * How long a sleep on the epoll set may last: while a lane of the running plan waits for its
 * connection, the progress rounds must come often, since neither a connect in progress nor a
 * listener's new connection is in that set. A tenth of the time waited so far, within
 * [CONN_POLL_MS, CONN_POLL_MAX_MS]: a connection that comes at once is taken within a
 * millisecond, a peer that is late costs few wake-ups. Called with the lock held.
 */
static int sleep_cap(struct fx_comm *comm, int ms)
{
    int64_t cap = fx_exec_idle_ms(comm, fx_now_ms()) / 10;

    if (!comm->exec.running || comm->exec.unconnected == 0) {
        return ms;
    }
    cap = cap < CONN_POLL_MS ? CONN_POLL_MS : cap > CONN_POLL_MAX_MS ? CONN_POLL_MAX_MS : cap;
    return ms > cap ? (int)cap : ms;
}

/*
 * The progress thread: sleeps on the condition variable while nothing is queued or a user
 * thread drives; otherwise sleeps in epoll_wait and runs progress rounds.
 */
static void *progress_main(void *arg)
{
    struct fx_comm *comm = arg;
    struct epoll_event evs[MAX_EVENTS];

    fx_log_set_rank(comm->rank);
    pthread_mutex_lock(&comm->lock);
    while (!comm->shutdown) {
        int n;
        int sleep_ms;

        if (comm->drivers > 0) {
            comm->parked = true;
            pthread_cond_wait(&comm->cond, &comm->lock);
            comm->parked = false;
            continue;
        }
        if (comm->exec.head == NULL) {
            /* Idle: still look at the control plane now and then, so that a failure elsewhere
             * or a stall report (rank 0) is handled while the user computes. */
            struct timespec until;

            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += IDLE_TICK_MS * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            comm->parked = true;
            pthread_cond_timedwait(&comm->cond, &comm->lock, &until);
            comm->parked = false;
            if (comm->drivers == 0 && comm->exec.head == NULL && !comm->shutdown &&
                comm->boot.fds != NULL) {
                fx_exec_drain_control(comm);
                if (comm->links.on && comm->error == FX_OK) {
                    fx_exec_links_tick(comm);
                }
            }
            continue;
        }
        sleep_ms = transport_may_sleep(comm) ? sleep_cap(comm, IDLE_WAIT_MS) : 0;
        pthread_mutex_unlock(&comm->lock);
        n = epoll_wait(comm->epfd, evs, MAX_EVENTS, sleep_ms);
        pthread_mutex_lock(&comm->lock);
        handle_events(comm, evs, n > 0 ? n : 0);
        if (comm->drivers == 0) {
            fx_exec_progress(comm);
        }
    }
    pthread_mutex_unlock(&comm->lock);
    return NULL;
}

/* Runs progress rounds without sleeping until req completes or FX_SPIN_US pass without an op
 * moving: waking from a sleep costs more than the next message of a collective usually takes
 * to arrive, and a collective of many messages (a ring's chunks) keeps spinning as long as they
 * come (a budget for the whole wait would put a 1 MiB all-reduce to sleep between chunks). The
 * transport is polled directly (no pass through the communicator's epoll set); the control
 * plane waits for the sleep that follows, at most FX_SPIN_US after the last move. On a host
 * with more ranks than cores each round yields the core first: the rank this one waits for may
 * be the one that needs it, and handing it over directly is far quicker than a sleep and a
 * wake-up. Called with the lock. */
static void spin_progress(struct fx_comm *comm, const struct fx_request *req, int64_t now_us)
{
    int64_t until  = now_us + comm->exec.spin_us;
    uint64_t moves = comm->exec.moves;

    /* The clock every SPIN_CLOCK_EVERY rounds: a round takes a few hundred nanoseconds, a
     * clock read tens of them in a virtual machine. */
    for (uint32_t round = 1; comm->exec.spin_us > 0 && !req->done && comm->error == FX_OK;
         round++) {
        if (round % SPIN_CLOCK_EVERY == 0) {
            int64_t now = fx_now_us();

            if (comm->exec.moves != moves) {
                moves = comm->exec.moves;
                until = now + comm->exec.spin_us;
            } else if (now >= until) {
                break;
            }
        }
        if (comm->exec.spin_yield) {
            pthread_mutex_unlock(&comm->lock);
            sched_yield();
            pthread_mutex_lock(&comm->lock);
        }
        fx_exec_progress(comm);
    }
}

static void req_release(struct fx_comm *comm, struct fx_request *req)
{
    req->done            = false;
    req->next            = comm->exec.free_reqs;
    comm->exec.free_reqs = req;
}

static fx_status finish_wait(struct fx_comm *comm, struct fx_request *req)
{
    fx_status status = req->status;

    req_release(comm, req);
    return status;
}

fx_status fx_exec_wait_locked(struct fx_request *req, int timeout_ms)
{
    struct fx_comm *comm = req->comm;
    int64_t deadline     = timeout_ms < 0 ? INT64_MAX : fx_now_ms() + timeout_ms;
    struct epoll_event evs[MAX_EVENTS];
    fx_status status = FX_INPROGRESS;

    if (comm->drivers++ == 0 && !comm->parked) {
        fx_comm_wake(comm); /* the progress thread leaves epoll_wait and parks */
    }
    for (;;) {
        int64_t left;
        int64_t now_us;
        int n;

        fx_exec_progress(comm);
        if (req->done) {
            status = finish_wait(comm, req);
            break;
        }
        now_us = fx_now_us();
        left   = deadline == INT64_MAX ? INT64_MAX : deadline - now_us / 1000;
        if (left <= 0) {
            break;
        }
        spin_progress(comm, req, now_us);
        if (req->done) {
            status = finish_wait(comm, req);
            break;
        }
        if (comm->error != FX_OK) {
            continue;
        }
        if (!transport_may_sleep(comm)) {
            continue;
        }
        pthread_mutex_unlock(&comm->lock);
        n = epoll_wait(comm->epfd, evs, MAX_EVENTS,
                       sleep_cap(comm, left < DRIVE_WAIT_MS ? (int)left : DRIVE_WAIT_MS));
        pthread_mutex_lock(&comm->lock);
        handle_events(comm, evs, n > 0 ? n : 0);
    }
    if (--comm->drivers == 0 && comm->exec.head != NULL) {
        pthread_cond_signal(&comm->cond); /* queued operations nobody waits for */
    }
    return status;
}

fx_status fx_exec_wait(struct fx_request *req, int timeout_ms)
{
    struct fx_comm *comm = req->comm;
    fx_status status;

    pthread_mutex_lock(&comm->lock);
    status = fx_exec_wait_locked(req, timeout_ms);
    pthread_mutex_unlock(&comm->lock);
    return status;
}

fx_status fx_exec_test(struct fx_request *req)
{
    struct fx_comm *comm = req->comm;
    fx_status status     = FX_INPROGRESS;

    pthread_mutex_lock(&comm->lock);
    fx_exec_progress(comm);
    if (req->done) {
        status = finish_wait(comm, req);
    }
    pthread_mutex_unlock(&comm->lock);
    return status;
}

/* ------------------------------------------------------------------ start / stop */

static fx_status epoll_add(int epfd, int fd, uint32_t tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = tag};

    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0 ? FX_OK : FX_ERR_SYSTEM;
}

static fx_status setup_epoll(struct fx_comm *comm, char *err, size_t errlen)
{
    int fds[256];
    int n = fx_boot_ctrl_fds(&comm->boot, fds, 256);

    comm->epfd   = epoll_create1(EPOLL_CLOEXEC);
    comm->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (comm->epfd < 0 || comm->wakefd < 0 || epoll_add(comm->epfd, comm->wakefd, EV_WAKE)) {
        snprintf(err, errlen, "epoll set-up failed: %s", strerror(errno));
        return FX_ERR_SYSTEM;
    }
    for (int t = 0; t < comm->ntps; t++) {
        if (epoll_add(comm->epfd, comm->tps[t].ops->wait_fd(comm->tps[t].tp), EV_TP) != FX_OK) {
            snprintf(err, errlen, "epoll set-up failed: %s", strerror(errno));
            return FX_ERR_SYSTEM;
        }
    }
    for (int i = 0; i < n; i++) {
        if (epoll_add(comm->epfd, fds[i], EV_CTRL) != FX_OK) {
            snprintf(err, errlen, "epoll set-up failed: %s", strerror(errno));
            return FX_ERR_SYSTEM;
        }
    }
    return FX_OK;
}

fx_status fx_exec_wait_start(struct fx_comm *comm, char *err, size_t errlen)
{
    fx_status status = setup_epoll(comm, err, errlen);

    if (status != FX_OK) {
        return status;
    }
    if (pthread_create(&comm->thread, NULL, progress_main, comm) != 0) {
        snprintf(err, errlen, "cannot start the progress thread");
        return FX_ERR_SYSTEM;
    }
    comm->thread_running = true;
    return FX_OK;
}

void fx_exec_wait_stop(struct fx_comm *comm)
{
    if (comm->thread_running) {
        pthread_mutex_lock(&comm->lock);
        comm->shutdown = true;
        pthread_cond_broadcast(&comm->cond);
        pthread_mutex_unlock(&comm->lock);
        fx_comm_wake(comm);
        pthread_join(comm->thread, NULL);
        comm->thread_running = false;
    }
    if (comm->epfd >= 0) {
        close(comm->epfd);
        comm->epfd = -1;
    }
    if (comm->wakefd >= 0) {
        close(comm->wakefd);
        comm->wakefd = -1;
    }
}
