/* Job-secret cryptography over OpenSSL libcrypto: HMAC-SHA256, random bytes, secret derivation. */
#ifndef FX_AUTH_H
#define FX_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

#define FX_SECRET_LEN 32
#define FX_MAC_LEN    32
#define FX_NONCE_LEN  32

/* Cryptographically random bytes. FX_ERR_SYSTEM if the generator fails. */
fx_status fx_auth_random(void *buf, size_t len);

/* mac = HMAC-SHA256(secret, label || a || b). */
void fx_auth_mac(const uint8_t secret[FX_SECRET_LEN], const char *label, const void *a, size_t alen,
                 const void *b, size_t blen, uint8_t mac[FX_MAC_LEN]);

/* Constant-time comparison of two MACs. */
bool fx_auth_equal(const uint8_t a[FX_MAC_LEN], const uint8_t b[FX_MAC_LEN]);

/* secret = SHA-256(label || text): turns a text secret (FX_JOB_SECRET) into a key. */
void fx_auth_derive(const char *label, const void *text, size_t len, uint8_t secret[FX_SECRET_LEN]);

#endif /* FX_AUTH_H */
