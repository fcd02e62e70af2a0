/* Interface selection (FX_SOCKET_IFNAME) over getifaddrs(3). */
#include "tcp_iface.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const virtual_prefixes[] = {"docker", "veth", "virbr", "br-", "lo", NULL};

struct cidr {
    int family;
    uint8_t addr[16];
    int bits;
};

static bool parse_cidr(const char *spec, struct cidr *c)
{
    char buf[64];
    char *slash;
    char *end = NULL;
    long bits;

    if (strchr(spec, '/') == NULL || strlen(spec) >= sizeof(buf)) {
        return false;
    }
    snprintf(buf, sizeof(buf), "%s", spec);
    slash  = strchr(buf, '/');
    *slash = '\0';
    bits   = strtol(slash + 1, &end, 10);
    if (end == slash + 1 || *end != '\0') {
        return false;
    }
    if (inet_pton(AF_INET, buf, c->addr) == 1) {
        c->family = AF_INET;
    } else if (inet_pton(AF_INET6, buf, c->addr) == 1) {
        c->family = AF_INET6;
    } else {
        return false;
    }
    c->bits = (int)bits;
    return bits >= 0 && bits <= (c->family == AF_INET ? 32 : 128);
}

static bool cidr_match(const struct cidr *c, const struct sockaddr *sa)
{
    const uint8_t *a;
    int full = c->bits / 8;
    int rest = c->bits % 8;

    if (sa->sa_family != c->family) {
        return false;
    }
    a = c->family == AF_INET ? (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr
                             : (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (memcmp(a, c->addr, (size_t)full) != 0) {
        return false;
    }
    return rest == 0 || ((a[full] ^ c->addr[full]) & (0xff00 >> rest)) == 0;
}

bool fx_tcp_iface_match(const char *spec, const char *name)
{
    bool exclude = spec[0] == '^';
    bool exact   = spec[0] == '=';
    char buf[256];
    char *save = NULL;
    bool hit   = false;

    snprintf(buf, sizeof(buf), "%s", spec + (exclude || exact ? 1 : 0));
    for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        hit |= exact ? strcmp(name, tok) == 0 : strncmp(name, tok, strlen(tok)) == 0;
    }
    return exclude ? !hit : hit;
}

static bool is_virtual(const char *name)
{
    for (int i = 0; virtual_prefixes[i] != NULL; i++) {
        if (strncmp(name, virtual_prefixes[i], strlen(virtual_prefixes[i])) == 0) {
            return true;
        }
    }
    return false;
}

static bool usable(const struct ifaddrs *ifa)
{
    if (ifa->ifa_addr == NULL || !(ifa->ifa_flags & IFF_UP)) {
        return false;
    }
    if (ifa->ifa_addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ifa->ifa_addr;

        return !IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr);
    }
    return ifa->ifa_addr->sa_family == AF_INET;
}

/* One pass: family, and whether virtual interfaces are allowed under the default rule. */
static void collect(struct ifaddrs *all, const char *spec, const struct cidr *cidr, int family,
                    bool allow_virtual, struct sockaddr_storage *addrs,
                    char (*names)[FX_TCP_IFNAME_LEN], int max, int *n)
{
    for (struct ifaddrs *ifa = all; ifa != NULL && *n < max; ifa = ifa->ifa_next) {
        if (!usable(ifa) || ifa->ifa_addr->sa_family != family) {
            continue;
        }
        if (cidr != NULL ? !cidr_match(cidr, ifa->ifa_addr)
                         : (spec != NULL ? !fx_tcp_iface_match(spec, ifa->ifa_name)
                                         : (!allow_virtual && is_virtual(ifa->ifa_name)))) {
            continue;
        }
        memset(&addrs[*n], 0, sizeof(addrs[*n]));
        memcpy(&addrs[*n], ifa->ifa_addr,
               family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
        if (names != NULL) {
            snprintf(names[*n], FX_TCP_IFNAME_LEN, "%s", ifa->ifa_name);
        }
        (*n)++;
    }
}

fx_status fx_tcp_iface_list(const char *spec, struct sockaddr_storage *addrs,
                            char (*names)[FX_TCP_IFNAME_LEN], int max, int *n)
{
    struct ifaddrs *all = NULL;
    struct cidr cidr;
    const struct cidr *cp = NULL;

    *n = 0;
    if (spec != NULL && spec[0] == '\0') {
        spec = NULL;
    }
    if (spec != NULL && strchr(spec, '/') != NULL) {
        if (!parse_cidr(spec, &cidr)) {
            return FX_ERR_INVALID_ARG;
        }
        cp = &cidr;
    } else if (spec != NULL && (spec[strspn(spec, "^=")] == '\0' || strlen(spec) > 255)) {
        return FX_ERR_INVALID_ARG;
    }
    if (getifaddrs(&all) != 0) {
        return FX_ERR_SYSTEM;
    }
    collect(all, spec, cp, AF_INET, false, addrs, names, max, n);
    collect(all, spec, cp, AF_INET6, false, addrs, names, max, n);
    if (*n == 0 && spec == NULL) {
        collect(all, NULL, NULL, AF_INET, true, addrs, names, max, n);
        collect(all, NULL, NULL, AF_INET6, true, addrs, names, max, n);
    }
    freeifaddrs(all);
    return FX_OK;
}
