/*
 * A memory registration cache shared by the transports that register memory with a device
 * (UCX's ucp_mem_map, verbs' ibv_reg_mr). The transport gives the registration itself as a
 * pair of callbacks; the cache decides when to call them.
 *
 * Entries cover whole pages: a request for [addr, addr+len) is widened to page boundaries and
 * a lookup hits any valid entry whose pages contain the whole widened range. Overlapping and
 * adjacent requests coexist as separate entries (no merging): registering the same pages twice
 * is allowed by both UCX and verbs, merging would deregister a range other operations may be
 * using, and collectives repeat the same few buffers, so the entries stay few. Lookups scan the
 * entries from the most recently used.
 *
 * Entries are refcounted: fx_rcache_get holds one until fx_rcache_put. A held entry is never
 * deregistered. Entries nobody holds stay registered for the next get, least recently used
 * first evicted while the registered bytes exceed max_bytes.
 *
 * Invalidation on unmap: a cached registration must never outlive the memory it covers (a
 * freed buffer whose addresses a later malloc returns backed by other pages would otherwise
 * send or receive the old pages). The cache listens to UCX's libucm UCM_EVENT_VM_UNMAPPED event
 * (munmap, mremap, shmdt, brk shrinking, madvise(MADV_DONTNEED) and free() of memory malloc
 * had mmapped), which libucm delivers on the unmapping thread before the pages go. The handler
 * runs inside the application's free or munmap, on any thread, maybe while another thread (or
 * the same one, inside a deregistration) is in the cache: it takes no lock and allocates
 * nothing. It writes the range into a fixed ring of pending invalidations (atomics only; when
 * the ring is full it raises a flag that invalidates every entry). The next get or put, before
 * anything else, drains the ring: entries overlapping a range are dropped from lookups at once,
 * deregistered at once when nobody holds them, or at their last put when in use, and never
 * handed out again.
 *
 * Caching happens only when those events are known to arrive: creation installs the handler,
 * then unmaps a test page and frees a 64 MiB malloc block (which glibc serves with mmap) and
 * checks that the handler saw both (a freed block the allocator keeps mapped passes: its pages
 * did not change). Without events (libucm's hooks off: UCX_MEM_EVENTS, UCX_MEM_MMAP_HOOK_MODE,
 * UCX_MEM_MALLOC_HOOKS; a build without libucm) and with max_bytes 0, the cache is off: every
 * get registers and every put deregisters (logged once per process at INFO). Not seen: memory
 * returned to the kernel by a raw system call, bypassing libc's munmap (a sanitizer runtime's
 * allocator does that for blocks leaving its quarantine), so with ASan the cache can go stale.
 *
 * Threading: get, put, stats and handle/range of a held entry may be called from any thread
 * (one mutex inside); create and destroy by one thread with no other call running. The
 * callbacks run under that mutex, so they must not call back into the cache.
 */
#ifndef FX_RCACHE_H
#define FX_RCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

struct fx_rcache;
struct fx_rcache_entry;

struct fx_rcache_ops {
    /* Registers [addr, addr+len) (page-aligned by the cache); returns a handle, or NULL with
     * the cause in err. */
    void *(*reg)(void *ctx, void *addr, size_t len, char *err, size_t errlen);
    /* Deregisters a handle reg returned. */
    void (*dereg)(void *ctx, void *handle);
};

/*
 * What an entry is keyed on. Virtual address ranges only for now; a DMA-BUF lookup
 * (fx_rcache_get_dmabuf: the fd's device and inode, offset, length) would add a kind and its
 * member of the union, matched only against entries of its own kind and never invalidated by
 * unmap events (the fd's object outlives the mapping).
 */
enum fx_rcache_key_kind {
    FX_RCACHE_KEY_VA = 1, /* pages of this process's address space */
};

struct fx_rcache_stats {
    uint64_t hits;          /* gets served by a cached entry */
    uint64_t misses;        /* gets that registered (every get while the cache is off) */
    uint64_t evictions;     /* unused entries deregistered to stay under max_bytes */
    uint64_t invalidations; /* entries dropped because their memory was unmapped */
    size_t bytes;           /* bytes registered now (cached and held entries) */
    size_t entries;         /* entries registered now */
};

/*
 * Creates a cache of registrations made through ops (ctx is passed to them). max_bytes bounds
 * the bytes of unused registrations kept (held ones are never evicted, so it may be exceeded
 * while they are held); 0 turns caching off. Returns FX_ERR_INVALID_ARG for missing callbacks,
 * FX_ERR_NO_MEMORY; the cause in err.
 */
fx_status fx_rcache_create(const struct fx_rcache_ops *ops, void *ctx, size_t max_bytes,
                           struct fx_rcache **rc, char *err, size_t errlen);

/*
 * Finds or makes a registration covering [addr, addr+len) and holds it until fx_rcache_put.
 * Errors: FX_ERR_INVALID_ARG (NULL address, zero length, a range past the end of the address
 * space), FX_ERR_SYSTEM (reg failed: its message in err), FX_ERR_NO_MEMORY.
 */
fx_status fx_rcache_get(struct fx_rcache *rc, const void *addr, size_t len,
                        struct fx_rcache_entry **ent, char *err, size_t errlen);

/* The handle reg returned for a held entry. */
void *fx_rcache_handle(const struct fx_rcache_entry *ent);

/* The page-aligned range a held entry registers. */
void fx_rcache_entry_range(const struct fx_rcache_entry *ent, uintptr_t *start, size_t *len);

/* Releases a hold; the entry must not be used after. */
void fx_rcache_put(struct fx_rcache *rc, struct fx_rcache_entry *ent);

/* Deregisters everything, held entries too (warned about: their holders must be gone), and
 * frees the cache. NULL is ignored. */
void fx_rcache_destroy(struct fx_rcache *rc);

void fx_rcache_stats(const struct fx_rcache *rc, struct fx_rcache_stats *st);

/* Whether registrations are kept between gets (false: max_bytes 0, or no unmap events). */
bool fx_rcache_enabled(const struct fx_rcache *rc);

#endif /* FX_RCACHE_H */
