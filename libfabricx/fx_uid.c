/* Unique ids: creation, the string form, the listener registry and torchrun rendezvous. */
#include "fx_uid.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "fx_config.h"
#include "fx_log.h"
#include "fx_sock.h"
#include "fx_status_int.h"
#include "transports/tcp/tcp_iface.h"

#define UID_PREFIX    "fx1-"
#define UID_CHECK_OFF 124
#define UID_ADDR_OFF  48
#define UID_ADDR_SIZE 18

struct reg_entry {
    uint16_t port;
    int fd;
    uint8_t secret[FX_SECRET_LEN];
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct reg_entry registry[16];
static int registry_len;

static void uid_check(const uint8_t *bytes, uint8_t out[4])
{
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    EVP_Digest(bytes, UID_CHECK_OFF, digest, &len, EVP_sha256(), NULL);
    memcpy(out, digest, 4);
}

void fx_uid_pack(const struct fx_uid *uid, fx_unique_id *id)
{
    uint8_t *b = (uint8_t *)id->internal;

    memset(b, 0, sizeof(id->internal));
    b[0] = 0x46; /* "FXID" little-endian */
    b[1] = 0x58;
    b[2] = 0x49;
    b[3] = 0x44;
    b[4] = FX_UID_VERSION & 0xff;
    b[5] = FX_UID_VERSION >> 8;
    b[6] = (uint8_t)uid->naddr;
    b[7] = uid->flags;
    b[8] = (uint8_t)(uid->port & 0xff);
    b[9] = (uint8_t)(uid->port >> 8);
    memcpy(b + 16, uid->secret, FX_SECRET_LEN);
    for (int i = 0; i < uid->naddr; i++) {
        uint8_t *a = b + UID_ADDR_OFF + i * UID_ADDR_SIZE;

        if (uid->addrs[i].ss_family == AF_INET) {
            a[0] = 4;
            memcpy(a + 2, &((const struct sockaddr_in *)&uid->addrs[i])->sin_addr, 4);
        } else {
            a[0] = 6;
            memcpy(a + 2, &((const struct sockaddr_in6 *)&uid->addrs[i])->sin6_addr, 16);
        }
    }
    uid_check(b, b + UID_CHECK_OFF);
}

static void unpack_addr(const uint8_t *a, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (a[0] == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;

        in->sin_family = AF_INET;
        in->sin_port   = htons(port);
        memcpy(&in->sin_addr, a + 2, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

        in6->sin6_family = AF_INET6;
        in6->sin6_port   = htons(port);
        memcpy(&in6->sin6_addr, a + 2, 16);
    }
}

fx_status fx_uid_unpack(const fx_unique_id *id, struct fx_uid *uid, char *err, size_t errlen)
{
    const uint8_t *b = (const uint8_t *)id->internal;
    uint32_t magic =
        (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;

    memset(uid, 0, sizeof(*uid));
    if (magic != FX_UID_MAGIC) {
        snprintf(err, errlen, "unique id is not a libfabricx id (bad magic)");
        return FX_ERR_INVALID_ARG;
    }
    if ((b[4] | b[5] << 8) != FX_UID_VERSION) {
        snprintf(err, errlen, "unique id has version %u, this library reads %u", b[4] | b[5] << 8,
                 FX_UID_VERSION);
        return FX_ERR_INVALID_ARG;
    }
    uid->naddr = b[6];
    uid->flags = b[7];
    uid->port  = (uint16_t)(b[8] | b[9] << 8);
    if (uid->naddr < 1 || uid->naddr > FX_UID_MAX_ADDRS || uid->port == 0) {
        snprintf(err, errlen, "unique id holds %d addresses and port %u", uid->naddr, uid->port);
        return FX_ERR_INVALID_ARG;
    }
    memcpy(uid->secret, b + 16, FX_SECRET_LEN);
    for (int i = 0; i < uid->naddr; i++) {
        const uint8_t *a = b + UID_ADDR_OFF + i * UID_ADDR_SIZE;

        if (a[0] != 4 && a[0] != 6) {
            snprintf(err, errlen, "unique id address %d has family %u", i, a[0]);
            return FX_ERR_INVALID_ARG;
        }
        unpack_addr(a, uid->port, &uid->addrs[i]);
    }
    return FX_OK;
}

FX_API fx_status fx_unique_id_to_string(const fx_unique_id *id, char *buf, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *b;

    if (id == NULL || buf == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_unique_id_to_string: NULL argument");
    }
    if (len < FX_UNIQUE_ID_STRLEN) {
        return fx_set_last_error(FX_ERR_INVALID_ARG,
                                 "fx_unique_id_to_string: buffer of %zu bytes, need %d", len,
                                 FX_UNIQUE_ID_STRLEN);
    }
    b = (const uint8_t *)id->internal;
    memcpy(buf, UID_PREFIX, 4);
    for (size_t i = 0; i < sizeof(id->internal); i++) {
        buf[4 + 2 * i]     = hex[b[i] >> 4];
        buf[4 + 2 * i + 1] = hex[b[i] & 15];
    }
    buf[FX_UNIQUE_ID_STRLEN - 1] = '\0';
    return FX_OK;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

FX_API fx_status fx_unique_id_from_string(const char *s, fx_unique_id *id)
{
    fx_unique_id tmp;
    uint8_t *b = (uint8_t *)tmp.internal;
    uint8_t check[4];
    struct fx_uid uid;
    char err[160];

    if (s == NULL || id == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_unique_id_from_string: NULL argument");
    }
    if (strlen(s) != FX_UNIQUE_ID_STRLEN - 1 || strncmp(s, UID_PREFIX, 4) != 0) {
        return fx_set_last_error(FX_ERR_INVALID_ARG,
                                 "unique id string must be %d characters starting \"%s\"",
                                 FX_UNIQUE_ID_STRLEN - 1, UID_PREFIX);
    }
    for (size_t i = 0; i < sizeof(tmp.internal); i++) {
        int hi = hexval(s[4 + 2 * i]);
        int lo = hexval(s[4 + 2 * i + 1]);

        if (hi < 0 || lo < 0) {
            return fx_set_last_error(FX_ERR_INVALID_ARG,
                                     "unique id string has a non-hex character at %zu",
                                     4 + 2 * i + (hi < 0 ? 0 : 1));
        }
        b[i] = (uint8_t)(hi << 4 | lo);
    }
    uid_check(b, check);
    if (memcmp(check, b + UID_CHECK_OFF, 4) != 0) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "unique id string is damaged (checksum)");
    }
    if (fx_uid_unpack(&tmp, &uid, err, sizeof(err)) != FX_OK) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "%s", err);
    }
    *id = tmp;
    return FX_OK;
}

static void registry_add(uint16_t port, int fd, const uint8_t *secret)
{
    pthread_mutex_lock(&reg_lock);
    if (registry_len == (int)(sizeof(registry) / sizeof(registry[0]))) {
        close(registry[0].fd);
        memmove(registry, registry + 1, sizeof(registry[0]) * (size_t)(registry_len - 1));
        registry_len--;
    }
    registry[registry_len].port = port;
    registry[registry_len].fd   = fd;
    memcpy(registry[registry_len].secret, secret, FX_SECRET_LEN);
    registry_len++;
    pthread_mutex_unlock(&reg_lock);
}

static int registry_remove(const struct fx_uid *uid)
{
    int fd = -1;

    pthread_mutex_lock(&reg_lock);
    for (int i = 0; i < registry_len; i++) {
        if (registry[i].port == uid->port &&
            memcmp(registry[i].secret, uid->secret, FX_SECRET_LEN) == 0) {
            fd = registry[i].fd;
            memmove(registry + i, registry + i + 1,
                    sizeof(registry[0]) * (size_t)(registry_len - i - 1));
            registry_len--;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return fd;
}

int fx_uid_take_listener(const struct fx_uid *uid)
{
    return registry_remove(uid);
}

void fx_uid_drop_listener(const struct fx_uid *uid)
{
    int fd = registry_remove(uid);

    if (fd >= 0) {
        close(fd);
    }
}

FX_API fx_status fx_get_unique_id(fx_unique_id *id)
{
    struct fx_uid uid;
    char names[FX_UID_MAX_ADDRS][16];
    char err[256];
    int fd;
    fx_status status;
    const char *ifname = getenv("FX_SOCKET_IFNAME");

    if (id == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_get_unique_id: id is NULL");
    }
    memset(&uid, 0, sizeof(uid));
    status = fx_tcp_iface_list(ifname != NULL && ifname[0] != '\0' ? ifname : NULL, uid.addrs,
                               names, FX_UID_MAX_ADDRS, &uid.naddr);
    if (status != FX_OK || uid.naddr == 0) {
        return fx_set_last_error(FX_ERR_CONNECTION,
                                 "no usable network interface for the bootstrap "
                                 "(FX_SOCKET_IFNAME=%s)",
                                 ifname != NULL ? ifname : "");
    }
    status = fx_auth_random(uid.secret, FX_SECRET_LEN);
    if (status != FX_OK) {
        return fx_set_last_error(status, "cannot draw the job secret: random generator failed");
    }
    status = fx_sock_listen_any(0, &fd, &uid.port, err, sizeof(err));
    if (status != FX_OK) {
        return fx_set_last_error(status, "bootstrap listener: %s", err);
    }
    registry_add(uid.port, fd, uid.secret);
    fx_uid_pack(&uid, id);
    fx_info(FX_SUB_BOOT, "new unique id: bootstrap port %u on %s (%d address%s)", uid.port,
            names[0], uid.naddr, uid.naddr > 1 ? "es" : "");
    return FX_OK;
}

static fx_status read_secret_file(const char *path, uint8_t secret[FX_SECRET_LEN], char *err,
                                  size_t errlen)
{
    char buf[4096];
    size_t n;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        snprintf(err, errlen, "FX_JOB_SECRET_FILE %s: %s", path, strerror(errno));
        return FX_ERR_INVALID_ARG;
    }
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
        n--;
    }
    if (n == 0) {
        snprintf(err, errlen, "FX_JOB_SECRET_FILE %s is empty", path);
        return FX_ERR_INVALID_ARG;
    }
    fx_auth_derive("fx-job-secret", buf, n, secret);
    return FX_OK;
}

static fx_status job_secret(const char *addr, uint16_t port, struct fx_uid *uid, char *err,
                            size_t errlen)
{
    static pthread_once_t warn_once = PTHREAD_ONCE_INIT;
    const char *text                = getenv("FX_JOB_SECRET");
    const char *file                = getenv("FX_JOB_SECRET_FILE");
    char pub[300];

    if (text != NULL && text[0] != '\0') {
        fx_auth_derive("fx-job-secret", text, strlen(text), uid->secret);
        return FX_OK;
    }
    if (file != NULL && file[0] != '\0') {
        return read_secret_file(file, uid->secret, err, errlen);
    }
    uid->flags |= FX_UID_FLAG_UNAUTH;
    snprintf(pub, sizeof(pub), "%s:%u", addr, port);
    fx_auth_derive("fx-unauthenticated", pub, strlen(pub), uid->secret);
    pthread_once(&warn_once, fx_uid_warn_unauth);
    return FX_OK;
}

void fx_uid_warn_unauth(void)
{
    fx_warn(FX_SUB_BOOT, "job is unauthenticated: set FX_JOB_SECRET or FX_JOB_SECRET_FILE on "
                         "every rank so that only this job's ranks can join");
}

fx_status fx_uid_from_master(const char *addr, const char *port, struct fx_uid *uid, char *err,
                             size_t errlen)
{
    struct addrinfo hints;
    struct addrinfo *res = NULL;
    char *end            = NULL;
    long p;
    int ret;

    memset(uid, 0, sizeof(*uid));
    errno = 0;
    p     = strtol(port, &end, 10);
    if (errno != 0 || end == port || *end != '\0' || p < 1 || p > 65534) {
        snprintf(err, errlen, "MASTER_PORT=%s is not a port number below 65535", port);
        return FX_ERR_INVALID_ARG;
    }
    uid->port = (uint16_t)(p + 1);
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    ret               = getaddrinfo(addr, NULL, &hints, &res);
    if (ret != 0) {
        snprintf(err, errlen, "MASTER_ADDR=%s cannot be resolved: %s", addr, gai_strerror(ret));
        return FX_ERR_INVALID_ARG;
    }
    for (struct addrinfo *ai = res; ai != NULL && uid->naddr < FX_UID_MAX_ADDRS; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) {
            continue;
        }
        memcpy(&uid->addrs[uid->naddr], ai->ai_addr, ai->ai_addrlen);
        if (ai->ai_family == AF_INET) {
            ((struct sockaddr_in *)&uid->addrs[uid->naddr])->sin_port = htons(uid->port);
        } else {
            ((struct sockaddr_in6 *)&uid->addrs[uid->naddr])->sin6_port = htons(uid->port);
        }
        uid->naddr++;
    }
    freeaddrinfo(res);
    if (uid->naddr == 0) {
        snprintf(err, errlen, "MASTER_ADDR=%s has no IPv4 or IPv6 address", addr);
        return FX_ERR_INVALID_ARG;
    }
    return job_secret(addr, uid->port, uid, err, errlen);
}
