/*
 * The registration cache (transports/rcache.h): lookups, refcounts against eviction, the LRU
 * bound, invalidation by munmap and free() (through libucm's events), invalidation of a held
 * entry, caching turned off, and a thread unmapping while another uses the cache. The reg and
 * dereg callbacks count their calls, so the tests check the registrations really made.
 */
#include <criterion/criterion.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fx_config_build.h"
#include "transports/rcache.h"

#define MiB ((size_t)1 << 20)

struct counters {
    atomic_int regs;
    atomic_int deregs;
    atomic_int bad_align;
    atomic_int fail_next; /* the next reg fails */
    size_t page;
};

static void *count_reg(void *ctx, void *addr, size_t len, char *err, size_t errlen)
{
    struct counters *c = ctx;

    if ((uintptr_t)addr % c->page != 0 || len % c->page != 0 || len == 0) {
        atomic_fetch_add(&c->bad_align, 1);
    }
    if (atomic_exchange(&c->fail_next, 0)) {
        snprintf(err, errlen, "test reg refused %zu bytes", len);
        return NULL;
    }
    /* A distinct handle per registration: its sequence number. */
    return (void *)(uintptr_t)atomic_fetch_add(&c->regs, 1) + 1;
}

static void count_dereg(void *ctx, void *handle)
{
    struct counters *c = ctx;

    atomic_fetch_add(&c->deregs, 1);
}

static const struct fx_rcache_ops count_ops = {.reg = count_reg, .dereg = count_dereg};

static struct fx_rcache *make_cache(struct counters *c, size_t max_bytes)
{
    struct fx_rcache *rc = NULL;
    char err[200]        = "";

    memset(c, 0, sizeof(*c));
    c->page = (size_t)sysconf(_SC_PAGESIZE);
    cr_assert_eq(fx_rcache_create(&count_ops, c, max_bytes, &rc, err, sizeof(err)), FX_OK, "%s",
                 err);
    return rc;
}

static struct fx_rcache_entry *get(struct fx_rcache *rc, const void *addr, size_t len)
{
    struct fx_rcache_entry *e = NULL;
    char err[200]             = "";

    cr_assert_eq(fx_rcache_get(rc, addr, len, &e, err, sizeof(err)), FX_OK, "get %p+%zu: %s", addr,
                 len, err);
    return e;
}

static struct fx_rcache_stats stats(struct fx_rcache *rc)
{
    struct fx_rcache_stats st;

    fx_rcache_stats(rc, &st);
    return st;
}

static uint8_t *map_pages(size_t n, size_t page)
{
    void *p = mmap(NULL, n * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    cr_assert_neq(p, MAP_FAILED, "mmap %zu pages", n);
    return p;
}

Test(rcache, bad_arguments_are_named, .timeout = 10)
{
    struct fx_rcache_ops no_dereg = {.reg = count_reg};
    struct fx_rcache *rc          = NULL;
    struct fx_rcache_entry *e     = NULL;
    struct counters c;
    char err[200] = "";
    uint8_t byte;

    cr_expect_eq(fx_rcache_create(&no_dereg, &c, MiB, &rc, err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "dereg") != NULL, "%s", err);
    rc = make_cache(&c, MiB);
    cr_expect_eq(fx_rcache_get(rc, &byte, 0, &e, err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "0 bytes") != NULL, "%s", err);
    cr_expect_eq(fx_rcache_get(rc, NULL, 10, &e, err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_rcache_get(rc, (void *)(UINTPTR_MAX - 100), 200, &e, err, sizeof(err)),
                 FX_ERR_INVALID_ARG);
    atomic_store(&c.fail_next, 1);
    cr_expect_eq(fx_rcache_get(rc, &byte, 1, &e, err, sizeof(err)), FX_ERR_SYSTEM);
    cr_expect(strstr(err, "test reg refused") != NULL, "%s", err);
    cr_expect_eq(e, NULL);
    cr_expect_eq(stats(rc).entries, 0);
    fx_rcache_destroy(rc);
    cr_expect_eq(atomic_load(&c.regs), 0);
    cr_expect_eq(atomic_load(&c.deregs), 0);
}

#if FX_HAVE_UCM

Test(rcache, contained_ranges_hit_others_miss, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 64 * MiB);
    uint8_t *buf         = map_pages(8, (size_t)sysconf(_SC_PAGESIZE));
    size_t pg            = c.page;
    struct fx_rcache_entry *a, *b, *d;
    uintptr_t start;
    size_t len;

    cr_assert(fx_rcache_enabled(rc), "libucm events must arrive in this build");
    a = get(rc, buf + 10, 2 * pg);
    fx_rcache_entry_range(a, &start, &len);
    cr_expect_eq(start, (uintptr_t)buf);
    cr_expect_eq(len, 3 * pg, "10 + 2 pages round to 3 whole pages");
    b = get(rc, buf + pg, pg);
    cr_expect_eq(b, a, "a range inside the entry hits it");
    d = get(rc, buf + 2 * pg, 2 * pg);
    cr_expect_neq(d, a, "a range reaching past the entry misses");
    cr_expect_neq(fx_rcache_handle(d), fx_rcache_handle(a));
    cr_expect_eq(stats(rc).hits, 1);
    cr_expect_eq(stats(rc).misses, 2);
    cr_expect_eq(stats(rc).entries, 2, "overlapping entries coexist");
    fx_rcache_put(rc, a);
    fx_rcache_put(rc, b);
    fx_rcache_put(rc, d);
    cr_expect_eq(atomic_load(&c.deregs), 0, "unused entries stay cached");
    fx_rcache_put(rc, get(rc, buf + 20, 100));
    cr_expect_eq(atomic_load(&c.regs), 2);
    fx_rcache_destroy(rc);
    cr_expect_eq(atomic_load(&c.deregs), 2);
    cr_expect_eq(atomic_load(&c.bad_align), 0);
    munmap(buf, 8 * pg);
}

Test(rcache, held_entries_are_never_evicted, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 1);
    size_t pg            = c.page;
    uint8_t *buf         = map_pages(4, pg);
    struct fx_rcache_entry *a, *b;

    cr_assert(fx_rcache_enabled(rc));
    a = get(rc, buf, pg);
    b = get(rc, buf + 2 * pg, pg);
    cr_expect_eq(atomic_load(&c.deregs), 0, "both held, over the 1-byte bound");
    cr_expect_eq(stats(rc).bytes, 2 * pg);
    fx_rcache_put(rc, a);
    cr_expect_eq(atomic_load(&c.deregs), 1, "the unused one goes");
    cr_expect_eq(stats(rc).evictions, 1);
    cr_expect_eq(fx_rcache_handle(b), (void *)2, "the held one is intact");
    fx_rcache_put(rc, b);
    cr_expect_eq(atomic_load(&c.deregs), 2);
    cr_expect_eq(stats(rc).entries, 0);
    fx_rcache_destroy(rc);
    munmap(buf, 4 * pg);
}

Test(rcache, least_recently_used_goes_first, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 2 * (size_t)sysconf(_SC_PAGESIZE));
    size_t pg            = c.page;
    uint8_t *buf         = map_pages(6, pg);

    cr_assert(fx_rcache_enabled(rc));
    fx_rcache_put(rc, get(rc, buf, 1));          /* A */
    fx_rcache_put(rc, get(rc, buf + 2 * pg, 1)); /* B */
    fx_rcache_put(rc, get(rc, buf, 1));          /* A again: B is now the oldest */
    cr_expect_eq(atomic_load(&c.regs), 2);
    fx_rcache_put(rc, get(rc, buf + 4 * pg, 1)); /* C: 3 pages > 2, B goes */
    cr_expect_eq(atomic_load(&c.deregs), 1);
    cr_expect_eq(stats(rc).evictions, 1);
    fx_rcache_put(rc, get(rc, buf, 1));
    cr_expect_eq(atomic_load(&c.regs), 3, "A still cached");
    fx_rcache_put(rc, get(rc, buf + 2 * pg, 1));
    cr_expect_eq(atomic_load(&c.regs), 4, "B registered again");
    cr_expect_eq(stats(rc).bytes, 2 * pg);
    fx_rcache_destroy(rc);
    cr_expect_eq(atomic_load(&c.deregs), atomic_load(&c.regs));
    munmap(buf, 6 * pg);
}

Test(rcache, munmap_invalidates_the_range, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 64 * MiB);
    size_t pg            = c.page;
    uint8_t *buf         = map_pages(4, pg);
    struct fx_rcache_entry *e;
    void *again;
    void *first;

    cr_assert(fx_rcache_enabled(rc));
    e     = get(rc, buf, 4 * pg);
    first = fx_rcache_handle(e);
    fx_rcache_put(rc, e);
    cr_assert_eq(munmap(buf, 4 * pg), 0);
    again = mmap(buf, 4 * pg, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    cr_assert_eq(again, (void *)buf, "the same addresses mapped again");
    e = get(rc, buf, 4 * pg);
    cr_expect_neq(fx_rcache_handle(e), first, "a new registration, not the stale one");
    cr_expect_eq(stats(rc).misses, 2);
    cr_expect_eq(stats(rc).hits, 0);
    cr_expect_eq(stats(rc).invalidations, 1);
    cr_expect_eq(atomic_load(&c.deregs), 1, "the stale one deregistered");
    fx_rcache_put(rc, e);
    fx_rcache_destroy(rc);
    munmap(buf, 4 * pg);
}

Test(rcache, free_of_a_large_malloc_invalidates, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc;
    size_t size = 8 * MiB;
    uintptr_t block;
    uint8_t *buf;

    /* Fixed, so malloc serves 8 MiB with its own mmap and free unmaps it. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    rc = make_cache(&c, 64 * MiB);
    cr_assert(fx_rcache_enabled(rc));
    buf = malloc(size);
    cr_assert_not_null(buf);
    memset(buf, 1, size);
    fx_rcache_put(rc, get(rc, buf, size));
    fx_rcache_put(rc, get(rc, buf, size));
    cr_expect_eq(atomic_load(&c.regs), 1);
    block = ((uintptr_t)buf + c.page - 1) & ~(uintptr_t)(c.page - 1);
    free(buf);
    if (msync((void *)block, c.page, MS_ASYNC) == 0) {
        fx_rcache_destroy(rc);
        cr_skip_test("the allocator kept the freed block mapped (a sanitizer's quarantine), so "
                     "there is nothing to invalidate");
    }
    buf = malloc(size);
    cr_assert_not_null(buf);
    fx_rcache_put(rc, get(rc, buf, size));
    cr_expect_eq(stats(rc).invalidations, 1, "free() unmapped the cached range");
    cr_expect_eq(atomic_load(&c.regs), 2);
    cr_expect_eq(stats(rc).entries, 1);
    free(buf);
    fx_rcache_destroy(rc);
    cr_expect_eq(atomic_load(&c.deregs), 2);
}

Test(rcache, a_held_entry_unmapped_goes_at_its_put, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 64 * MiB);
    size_t pg            = c.page;
    uint8_t *buf         = map_pages(2, pg);
    struct fx_rcache_entry *held, *fresh;

    cr_assert(fx_rcache_enabled(rc));
    held = get(rc, buf, pg);
    cr_assert_eq(munmap(buf, 2 * pg), 0);
    cr_assert_eq(mmap(buf, 2 * pg, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0),
                 (void *)buf);
    fresh = get(rc, buf, pg);
    cr_expect_neq(fresh, held, "an invalidated entry is never handed out again");
    cr_expect_eq(stats(rc).invalidations, 1);
    cr_expect_eq(atomic_load(&c.deregs), 0, "held: not deregistered under its user");
    cr_expect_eq(fx_rcache_handle(held), (void *)1);
    fx_rcache_put(rc, held);
    cr_expect_eq(atomic_load(&c.deregs), 1, "deregistered at its last put");
    fx_rcache_put(rc, fresh);
    cr_expect_eq(atomic_load(&c.deregs), 1, "the fresh one stays cached");
    fx_rcache_put(rc, get(rc, buf, pg));
    cr_expect_eq(stats(rc).hits, 1);
    fx_rcache_destroy(rc);
    cr_expect_eq(atomic_load(&c.deregs), 2);
    munmap(buf, 2 * pg);
}

struct unmapper {
    uint8_t **regions;
    int n;
    size_t len;
    atomic_bool done;
};

static void *unmap_all(void *arg)
{
    struct unmapper *u = arg;

    for (int i = 0; i < u->n; i++) {
        munmap(u->regions[i], u->len);
        sched_yield();
    }
    atomic_store(&u->done, true);
    return NULL;
}

/*
 * One thread unmaps cached regions while another keeps getting and putting its own buffer:
 * every unmapped region is invalidated, the other buffer still hits, and every registration
 * is deregistered in the end.
 */
Test(rcache, a_thread_unmapping_while_another_uses_the_cache, .timeout = 30)
{
    enum { N = 40 };
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 512 * MiB);
    size_t pg            = c.page;
    uint8_t *regions[N];
    uint8_t *mine     = map_pages(4, pg);
    struct unmapper u = {.regions = regions, .n = N, .len = 4 * pg};
    pthread_t t;
    time_t deadline = time(NULL) + 20;
    int loops       = 0;

    cr_assert(fx_rcache_enabled(rc));
    for (int i = 0; i < N; i++) {
        regions[i] = map_pages(4, pg);
        fx_rcache_put(rc, get(rc, regions[i], 4 * pg));
    }
    fx_rcache_put(rc, get(rc, mine, 4 * pg));
    cr_assert_eq(pthread_create(&t, NULL, unmap_all, &u), 0);
    while ((!atomic_load(&u.done) || loops < 100) && loops < 1000000 && time(NULL) < deadline) {
        fx_rcache_put(rc, get(rc, mine + (loops % 3) * pg, pg));
        loops++;
    }
    pthread_join(t, NULL);
    fx_rcache_put(rc, get(rc, mine, pg));
    cr_expect_geq(stats(rc).invalidations, N, "every unmapped region invalidated");
    cr_expect_geq(stats(rc).hits, 1, "the other buffer kept hitting");
    cr_expect_eq(stats(rc).entries, atomic_load(&c.regs) - atomic_load(&c.deregs));
    fx_rcache_destroy(rc);
    cr_expect_eq(atomic_load(&c.deregs), atomic_load(&c.regs));
    munmap(mine, 4 * pg);
}

/*
 * meson runs this alone a second time with UCX_MEM_EVENTS=no (unit-rcache-no-events): libucm
 * then reports no unmap, so the cache must not keep anything.
 */
Test(rcache, without_unmap_events_nothing_is_cached, .timeout = 10)
{
    const char *events = getenv("UCX_MEM_EVENTS");
    bool off           = events != NULL && strcmp(events, "no") == 0;
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 64 * MiB);
    uint8_t *buf         = map_pages(1, c.page);

    cr_expect_eq(fx_rcache_enabled(rc), !off, "UCX_MEM_EVENTS=%s", events ? events : "(unset)");
    fx_rcache_put(rc, get(rc, buf, 1));
    fx_rcache_put(rc, get(rc, buf, 1));
    cr_expect_eq(atomic_load(&c.regs), off ? 2 : 1);
    cr_expect_eq(atomic_load(&c.deregs), off ? 2 : 0);
    fx_rcache_destroy(rc);
    munmap(buf, c.page);
}

#endif /* FX_HAVE_UCM */

/* FX_REG_CACHE_MAX=0 (and any cache without unmap events): one registration per get. */
Test(rcache, max_zero_registers_per_operation, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 0);
    size_t pg            = c.page;
    uint8_t *buf         = map_pages(2, pg);
    struct fx_rcache_entry *a, *b;

    cr_expect_not(fx_rcache_enabled(rc));
    a = get(rc, buf, pg);
    b = get(rc, buf, pg);
    cr_expect_neq(a, b);
    cr_expect_eq(atomic_load(&c.regs), 2);
    fx_rcache_put(rc, a);
    cr_expect_eq(atomic_load(&c.deregs), 1, "deregistered at put");
    fx_rcache_put(rc, b);
    cr_expect_eq(atomic_load(&c.deregs), 2);
    cr_expect_eq(stats(rc).misses, 2);
    cr_expect_eq(stats(rc).hits, 0);
    cr_expect_eq(stats(rc).entries, 0);
    fx_rcache_destroy(rc);
    munmap(buf, 2 * pg);
}

#if !FX_HAVE_UCM
/* Without libucm nothing notices unmapped memory, so nothing is cached. */
Test(rcache, without_libucm_the_cache_is_off, .timeout = 10)
{
    struct counters c;
    struct fx_rcache *rc = make_cache(&c, 64 * MiB);
    uint8_t byte;

    cr_expect_not(fx_rcache_enabled(rc));
    fx_rcache_put(rc, get(rc, &byte, 1));
    fx_rcache_put(rc, get(rc, &byte, 1));
    cr_expect_eq(atomic_load(&c.regs), 2);
    cr_expect_eq(atomic_load(&c.deregs), 2);
    fx_rcache_destroy(rc);
}
#endif
