/* HMAC-SHA256 and randomness for the bootstrap handshake, from OpenSSL libcrypto. */
#include "fx_auth.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "fx_log.h"

fx_status fx_auth_random(void *buf, size_t len)
{
    if (RAND_bytes(buf, (int)len) != 1) {
        fx_warn(FX_SUB_INIT, "random number generator failed");
        return FX_ERR_SYSTEM;
    }
    return FX_OK;
}

void fx_auth_mac(const uint8_t secret[FX_SECRET_LEN], const char *label, const void *a, size_t alen,
                 const void *b, size_t blen, uint8_t mac[FX_MAC_LEN])
{
    uint8_t msg[256];
    size_t llen         = strlen(label);
    unsigned int maclen = FX_MAC_LEN;

    FX_ASSERT(llen + alen + blen <= sizeof(msg));
    memcpy(msg, label, llen);
    if (alen > 0) {
        memcpy(msg + llen, a, alen);
    }
    if (blen > 0) {
        memcpy(msg + llen + alen, b, blen);
    }
    if (HMAC(EVP_sha256(), secret, FX_SECRET_LEN, msg, llen + alen + blen, mac, &maclen) == NULL) {
        /* Only fails on allocation failure inside OpenSSL: make the MAC unguessable garbage
         * that cannot match, so authentication fails closed. */
        memset(mac, 0, FX_MAC_LEN);
        fx_auth_random(mac, FX_MAC_LEN);
    }
}

bool fx_auth_equal(const uint8_t a[FX_MAC_LEN], const uint8_t b[FX_MAC_LEN])
{
    return CRYPTO_memcmp(a, b, FX_MAC_LEN) == 0;
}

void fx_auth_derive(const char *label, const void *text, size_t len, uint8_t secret[FX_SECRET_LEN])
{
    EVP_MD_CTX *ctx     = EVP_MD_CTX_new();
    unsigned int outlen = FX_SECRET_LEN;

    FX_ASSERT(ctx != NULL);
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, label, strlen(label));
    EVP_DigestUpdate(ctx, text, len);
    EVP_DigestFinal_ex(ctx, secret, &outlen);
    EVP_MD_CTX_free(ctx);
}
