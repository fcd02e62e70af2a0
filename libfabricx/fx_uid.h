/*
 * The unique id's layout (128 bytes, little-endian) and its listener registry.
 *
 *   0  u32 magic     "FXID" (0x44495846)
 *   4  u16 version   FX_UID_VERSION
 *   6  u8  naddr     addresses that follow (1..FX_UID_MAX_ADDRS)
 *   7  u8  flags     FX_UID_FLAG_*
 *   8  u16 port      rank 0's bootstrap port
 *  10  6 bytes       zero
 *  16  32 bytes      job secret (HMAC key)
 *  48  4 x 18 bytes  addresses: u8 family (4 or 6), u8 zero, 16 bytes address (IPv4 in the
 *                    first 4)
 * 120  4 bytes       zero
 * 124  u32 check     first 4 bytes of SHA-256 over bytes 0..123; checked by the string parser
 */
#ifndef FX_UID_H
#define FX_UID_H

#include <stdint.h>
#include <sys/socket.h>

#include "fabricx.h"
#include "fx_auth.h"

#define FX_UID_MAGIC       0x44495846u
#define FX_UID_VERSION     1
#define FX_UID_MAX_ADDRS   4
#define FX_UID_FLAG_UNAUTH 0x1u /* secret derived from public values: no authentication */

struct fx_uid {
    uint16_t port;
    uint8_t flags;
    int naddr;
    struct sockaddr_storage addrs[FX_UID_MAX_ADDRS];
    uint8_t secret[FX_SECRET_LEN];
};

void fx_uid_pack(const struct fx_uid *uid, fx_unique_id *id);
/* FX_ERR_INVALID_ARG with the reason in err for a malformed id. */
fx_status fx_uid_unpack(const fx_unique_id *id, struct fx_uid *uid, char *err, size_t errlen);

/*
 * Listener registry: fx_get_unique_id keeps the bootstrap socket open in the process; rank 0
 * takes it at init (also after fork). Returns the fd, or -1 if none is registered for this id.
 */
int fx_uid_take_listener(const struct fx_uid *uid);
/* Closes a registered listener for this id (a non-root rank that inherited it through fork). */
void fx_uid_drop_listener(const struct fx_uid *uid);

/* Warns once per process that a torchrun-style job runs without a secret. */
void fx_uid_warn_unauth(void);

/* Builds the id for torchrun-style rendezvous: MASTER_ADDR, MASTER_PORT + 1, secret from
 * FX_JOB_SECRET / FX_JOB_SECRET_FILE (or unauthenticated, with a warning). */
fx_status fx_uid_from_master(const char *addr, const char *port, struct fx_uid *uid, char *err,
                             size_t errlen);

#endif /* FX_UID_H */
