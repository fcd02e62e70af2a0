/* The memory registration cache (rcache.h describes it). */
#include "transports/rcache.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fx_config_build.h"
#include "fx_log.h"

#if FX_HAVE_UCM
#include <ucm/api/ucm.h>
#endif

#define PENDING_SLOTS 128  /* unmap events held between two drains before all is invalidated */
#define UCM_PRIORITY  1000 /* libucm's order among its handlers; UCX's own caches use it too */
#define PROBE_MALLOC  (64 << 20) /* creation's test of free(): above any mmap threshold of glibc */

enum { SLOT_FREE, SLOT_WRITING, SLOT_READY };

/* One unmapped range waiting for the next drain; state hands it from the event to the drain. */
struct pending {
    atomic_int state;
    uintptr_t start;
    uintptr_t end;
};

struct fx_rcache_entry {
    struct fx_rcache_entry *prev; /* in the cache's list, most recently used first */
    struct fx_rcache_entry *next;
    enum fx_rcache_key_kind kind;
    uintptr_t start; /* page-aligned [start, end) */
    uintptr_t end;
    void *handle;
    unsigned refs;
    bool cached; /* found by lookups; false: invalidated, or registered for one hold only */
};

struct fx_rcache {
    struct fx_rcache_ops ops;
    void *ctx;
    size_t max_bytes;
    uintptr_t page;
    bool enabled;     /* registrations outlive their holds */
    bool handler_set; /* the unmap handler is installed */
    pthread_mutex_t lock;
    struct fx_rcache_entry *head;
    struct fx_rcache_entry *tail;
    struct fx_rcache_stats st;
    /* Written by the unmap handler on any thread, lock-free. */
    atomic_uintptr_t lo; /* a bound on the cached ranges: events outside it are ignored */
    atomic_uintptr_t hi;
    atomic_uintptr_t probe; /* an address creation releases to see the event (events_work) */
    atomic_bool probe_seen;
    atomic_bool overflow; /* an event found the ring full: invalidate everything */
    atomic_int npending;
    atomic_uint next_slot;
    struct pending ring[PENDING_SLOTS];
};

/* ------------------------------------------------------------------ unmap events */

#if FX_HAVE_UCM
/* Queues an unmapped range for the next drain; allocates nothing and never waits. */
static void pending_push(struct fx_rcache *rc, uintptr_t start, uintptr_t end)
{
    unsigned i           = atomic_fetch_add(&rc->next_slot, 1) % PENDING_SLOTS;
    struct pending *slot = &rc->ring[i];
    int expect           = SLOT_FREE;

    if (!atomic_compare_exchange_strong(&slot->state, &expect, SLOT_WRITING)) {
        atomic_store(&rc->overflow, true);
        return;
    }
    slot->start = start;
    slot->end   = end;
    atomic_store_explicit(&slot->state, SLOT_READY, memory_order_release);
    atomic_fetch_add(&rc->npending, 1);
}

/*
 * libucm's UCM_EVENT_VM_UNMAPPED handler: called before the pages go, inside the application's
 * munmap, free, brk or madvise, on any thread. Only atomics here (rcache.h).
 */
static void unmap_event(ucm_event_type_t type, ucm_event_t *ev, void *arg)
{
    struct fx_rcache *rc = arg;
    uintptr_t start      = (uintptr_t)ev->vm_unmapped.address;
    uintptr_t end        = start + ev->vm_unmapped.size;
    uintptr_t probe      = atomic_load(&rc->probe);

    if (type != UCM_EVENT_VM_UNMAPPED || end <= start) {
        return;
    }
    if (probe != 0 && probe >= start && probe < end) {
        atomic_store(&rc->probe_seen, true);
    }
    if (end <= atomic_load(&rc->lo) || start >= atomic_load(&rc->hi)) {
        return;
    }
    pending_push(rc, start, end);
}

/* Releases addr (munmap or free) with the probe armed; true when the handler saw it go. */
static bool probe_release(struct fx_rcache *rc, void *addr, void (*release)(void *, size_t),
                          size_t len)
{
    atomic_store(&rc->probe_seen, false);
    atomic_store(&rc->probe, (uintptr_t)addr);
    release(addr, len);
    atomic_store(&rc->probe, 0);
    return atomic_load(&rc->probe_seen);
}

static void release_munmap(void *addr, size_t len)
{
    munmap(addr, len);
}

static void release_free(void *addr, size_t len)
{
    free(addr);
}

/*
 * Checks that unmap events arrive for the two ways memory leaves: munmap of a page, and free()
 * of a block too large for malloc's heap (PROBE_MALLOC is above glibc's largest mmap
 * threshold). After a free without an event, the block must still be mapped: an allocator
 * that keeps it (libucm's own, a sanitizer's quarantine) has not changed its pages.
 */
static bool events_work(struct fx_rcache *rc, char *why, size_t whylen)
{
    void *p = mmap(NULL, rc->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uintptr_t block;

    if (p == MAP_FAILED) {
        snprintf(why, whylen, "mmap of a test page failed: %s", strerror(errno));
        return false;
    }
    if (!probe_release(rc, p, release_munmap, rc->page)) {
        snprintf(why, whylen,
                 "libucm did not report a test munmap (its hooks are off: UCX_MEM_EVENTS, "
                 "UCX_MEM_MMAP_HOOK_MODE)");
        return false;
    }
    p = malloc(PROBE_MALLOC);
    if (p == NULL) {
        snprintf(why, whylen, "malloc of a %d MiB test block failed", PROBE_MALLOC >> 20);
        return false;
    }
    block = ((uintptr_t)p + rc->page - 1) & ~(rc->page - 1);
    if (!probe_release(rc, p, release_free, PROBE_MALLOC) &&
        msync((void *)block, rc->page, MS_ASYNC) != 0) {
        snprintf(why, whylen,
                 "libucm did not report the unmap of a freed %d MiB block (UCX_MEM_MALLOC_HOOKS, "
                 "UCX_MEM_MMAP_HOOK_MODE)",
                 PROBE_MALLOC >> 20);
        return false;
    }
    return true;
}

/* Installs the unmap handler; false with the reason when events do not arrive. */
static bool events_start(struct fx_rcache *rc, char *why, size_t whylen)
{
    ucs_status_t st = ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, UCM_PRIORITY, unmap_event, rc);

    if (st != UCS_OK) {
        snprintf(why, whylen, "libucm cannot deliver unmap events: %s", ucs_status_string(st));
        return false;
    }
    rc->handler_set = true;
    if (events_work(rc, why, whylen)) {
        return true;
    }
    ucm_unset_event_handler(UCM_EVENT_VM_UNMAPPED, unmap_event, rc);
    rc->handler_set = false;
    return false;
}

static void events_stop(struct fx_rcache *rc)
{
    if (rc->handler_set) {
        ucm_unset_event_handler(UCM_EVENT_VM_UNMAPPED, unmap_event, rc);
        rc->handler_set = false;
    }
}
#else
static bool events_start(struct fx_rcache *rc, char *why, size_t whylen)
{
    snprintf(why, whylen, "built without libucm, so unmapped memory cannot be noticed");
    return false;
}

static void events_stop(struct fx_rcache *rc)
{
}
#endif

/* ------------------------------------------------------------------ entries */

static void list_unlink(struct fx_rcache *rc, struct fx_rcache_entry *e)
{
    if (e->prev != NULL) {
        e->prev->next = e->next;
    } else {
        rc->head = e->next;
    }
    if (e->next != NULL) {
        e->next->prev = e->prev;
    } else {
        rc->tail = e->prev;
    }
    e->prev = e->next = NULL;
}

static void list_push_front(struct fx_rcache *rc, struct fx_rcache_entry *e)
{
    e->prev = NULL;
    e->next = rc->head;
    if (rc->head != NULL) {
        rc->head->prev = e;
    } else {
        rc->tail = e;
    }
    rc->head = e;
}

/* Deregisters an entry nobody holds and frees it. */
static void entry_release(struct fx_rcache *rc, struct fx_rcache_entry *e)
{
    list_unlink(rc, e);
    rc->ops.dereg(rc->ctx, e->handle);
    rc->st.bytes -= e->end - e->start;
    rc->st.entries--;
    free(e);
    if (rc->head == NULL) {
        atomic_store(&rc->lo, UINTPTR_MAX);
        atomic_store(&rc->hi, 0);
    }
}

/* Drops the cached entries overlapping [start, end) from lookups; frees those nobody holds. */
static void invalidate_range(struct fx_rcache *rc, uintptr_t start, uintptr_t end)
{
    for (struct fx_rcache_entry *e = rc->head, *next; e != NULL; e = next) {
        next = e->next;
        if (!e->cached || e->end <= start || e->start >= end) {
            continue;
        }
        e->cached = false;
        rc->st.invalidations++;
        if (e->refs == 0) {
            entry_release(rc, e);
        }
    }
}

/* Applies the unmap events queued since the last drain. Called with the lock held. */
static void drain(struct fx_rcache *rc)
{
    if (atomic_load(&rc->npending) == 0 && !atomic_load(&rc->overflow)) {
        return;
    }
    if (atomic_exchange(&rc->overflow, false)) {
        invalidate_range(rc, 0, UINTPTR_MAX);
    }
    for (int i = 0; i < PENDING_SLOTS; i++) {
        struct pending *slot = &rc->ring[i];
        uintptr_t start;
        uintptr_t end;

        if (atomic_load_explicit(&slot->state, memory_order_acquire) != SLOT_READY) {
            continue;
        }
        start = slot->start;
        end   = slot->end;
        atomic_store_explicit(&slot->state, SLOT_FREE, memory_order_release);
        atomic_fetch_sub(&rc->npending, 1);
        invalidate_range(rc, start, end);
    }
}

/* Deregisters the least recently used unheld entries while the bytes exceed the bound. */
static void evict(struct fx_rcache *rc)
{
    for (struct fx_rcache_entry *e = rc->tail, *prev; e != NULL && rc->st.bytes > rc->max_bytes;
         e                         = prev) {
        prev = e->prev;
        if (e->refs == 0) {
            rc->st.evictions++;
            entry_release(rc, e);
        }
    }
}

static struct fx_rcache_entry *lookup(struct fx_rcache *rc, uintptr_t start, uintptr_t end)
{
    for (struct fx_rcache_entry *e = rc->head; e != NULL; e = e->next) {
        if (e->cached && e->kind == FX_RCACHE_KEY_VA && e->start <= start && end <= e->end) {
            return e;
        }
    }
    return NULL;
}

/* Registers [start, end) as a new entry held once. Called with the lock held. */
static fx_status entry_create(struct fx_rcache *rc, uintptr_t start, uintptr_t end,
                              struct fx_rcache_entry **out, char *err, size_t errlen)
{
    struct fx_rcache_entry *e = calloc(1, sizeof(*e));

    if (e == NULL) {
        snprintf(err, errlen, "rcache: out of memory for an entry");
        return FX_ERR_NO_MEMORY;
    }
    if (rc->enabled) {
        /* Before reg: an unmap of these pages from now on is queued, not filtered out. */
        if (start < atomic_load(&rc->lo)) {
            atomic_store(&rc->lo, start);
        }
        if (end > atomic_load(&rc->hi)) {
            atomic_store(&rc->hi, end);
        }
    }
    e->handle = rc->ops.reg(rc->ctx, (void *)start, end - start, err, errlen);
    if (e->handle == NULL) {
        free(e);
        return FX_ERR_SYSTEM;
    }
    e->kind   = FX_RCACHE_KEY_VA;
    e->start  = start;
    e->end    = end;
    e->refs   = 1;
    e->cached = rc->enabled;
    list_push_front(rc, e);
    rc->st.bytes += end - start;
    rc->st.entries++;
    *out = e;
    return FX_OK;
}

/* ------------------------------------------------------------------ API */

fx_status fx_rcache_create(const struct fx_rcache_ops *ops, void *ctx, size_t max_bytes,
                           struct fx_rcache **out, char *err, size_t errlen)
{
    static atomic_flag off_logged = ATOMIC_FLAG_INIT;
    struct fx_rcache *rc;
    char why[200] = "its bound is 0 bytes: FX_REG_CACHE_MAX=0";
    long page     = sysconf(_SC_PAGESIZE);

    if (ops == NULL || ops->reg == NULL || ops->dereg == NULL) {
        snprintf(err, errlen, "rcache: the reg and dereg callbacks are required");
        return FX_ERR_INVALID_ARG;
    }
    rc = calloc(1, sizeof(*rc));
    if (rc == NULL) {
        snprintf(err, errlen, "rcache: out of memory");
        return FX_ERR_NO_MEMORY;
    }
    rc->ops       = *ops;
    rc->ctx       = ctx;
    rc->max_bytes = max_bytes;
    rc->page      = page > 0 ? (uintptr_t)page : 4096;
    pthread_mutex_init(&rc->lock, NULL);
    atomic_init(&rc->lo, UINTPTR_MAX);
    atomic_init(&rc->hi, 0);
    for (int i = 0; i < PENDING_SLOTS; i++) {
        atomic_init(&rc->ring[i].state, SLOT_FREE);
    }
    rc->enabled = max_bytes > 0 && events_start(rc, why, sizeof(why));
    if (!rc->enabled && !atomic_flag_test_and_set(&off_logged)) {
        fx_info(FX_SUB_MEM, "registration cache off (%s): memory is registered for each operation",
                why);
    }
    *out = rc;
    return FX_OK;
}

fx_status fx_rcache_get(struct fx_rcache *rc, const void *addr, size_t len,
                        struct fx_rcache_entry **ent, char *err, size_t errlen)
{
    uintptr_t a = (uintptr_t)addr;
    struct fx_rcache_entry *e;
    uintptr_t start;
    uintptr_t end;
    fx_status status = FX_OK;

    if (addr == NULL || len == 0 || len > UINTPTR_MAX - rc->page ||
        a > UINTPTR_MAX - rc->page - len) {
        snprintf(err, errlen, "rcache: cannot register %zu bytes at %p", len, addr);
        return FX_ERR_INVALID_ARG;
    }
    start = a & ~(rc->page - 1);
    end   = (a + len + rc->page - 1) & ~(rc->page - 1);
    pthread_mutex_lock(&rc->lock);
    drain(rc);
    e = rc->enabled ? lookup(rc, start, end) : NULL;
    if (e != NULL) {
        e->refs++;
        rc->st.hits++;
        list_unlink(rc, e);
        list_push_front(rc, e);
    } else {
        rc->st.misses++;
        status = entry_create(rc, start, end, &e, err, errlen);
        if (status == FX_OK) {
            evict(rc);
        }
    }
    pthread_mutex_unlock(&rc->lock);
    if (status == FX_OK) {
        *ent = e;
    }
    return status;
}

void *fx_rcache_handle(const struct fx_rcache_entry *ent)
{
    return ent->handle;
}

void fx_rcache_entry_range(const struct fx_rcache_entry *ent, uintptr_t *start, size_t *len)
{
    *start = ent->start;
    *len   = ent->end - ent->start;
}

void fx_rcache_put(struct fx_rcache *rc, struct fx_rcache_entry *ent)
{
    pthread_mutex_lock(&rc->lock);
    FX_ASSERT(ent->refs > 0);
    drain(rc);
    if (--ent->refs == 0) {
        if (ent->cached) {
            list_unlink(rc, ent);
            list_push_front(rc, ent);
            evict(rc);
        } else {
            entry_release(rc, ent);
        }
    }
    pthread_mutex_unlock(&rc->lock);
}

void fx_rcache_destroy(struct fx_rcache *rc)
{
    unsigned held = 0;

    if (rc == NULL) {
        return;
    }
    events_stop(rc);
    while (rc->head != NULL) {
        held += rc->head->refs > 0;
        entry_release(rc, rc->head);
    }
    if (held > 0) {
        fx_warn(FX_SUB_MEM, "registration cache destroyed with %u entries still held", held);
    }
    pthread_mutex_destroy(&rc->lock);
    free(rc);
}

void fx_rcache_stats(const struct fx_rcache *rc, struct fx_rcache_stats *st)
{
    pthread_mutex_lock((pthread_mutex_t *)&rc->lock);
    *st = rc->st;
    pthread_mutex_unlock((pthread_mutex_t *)&rc->lock);
}

bool fx_rcache_enabled(const struct fx_rcache *rc)
{
    return rc->enabled;
}
