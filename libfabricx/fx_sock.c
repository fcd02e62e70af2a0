/* Socket helpers with deadlines, used by the bootstrap. */
#include "fx_sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t fx_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fx_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void fx_sock_addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            /* An IPv4 peer on a dual-stack socket: name it as operators know it. */
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof(host));
            snprintf(buf, len, "%s:%u", host, ntohs(in6->sin6_port));
            return;
        }
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(buf, len, "(family %d)", sa->sa_family);
    }
}

static fx_status bind_any(int family, uint16_t port, int *fd_out)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int one  = 1;
    int zero = 0;
    int fd   = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return FX_ERR_SYSTEM;
    }
    memset(&ss, 0, sizeof(ss));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        in6->sin6_family = AF_INET6;
        in6->sin6_addr   = in6addr_any;
        in6->sin6_port   = htons(port);
        len              = sizeof(*in6);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;

        in->sin_family      = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_ANY);
        in->sin_port        = htons(port);
        len                 = sizeof(*in);
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        int saved = errno;

        close(fd);
        errno = saved;
        return FX_ERR_SYSTEM;
    }
    *fd_out = fd;
    return FX_OK;
}

fx_status fx_sock_listen_any(uint16_t port, int *fd, uint16_t *bound_port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (bind_any(AF_INET6, port, fd) != FX_OK && bind_any(AF_INET, port, fd) != FX_OK) {
        snprintf(err, errlen, "cannot listen on port %u: %s", port, strerror(errno));
        return FX_ERR_SYSTEM;
    }
    if (getsockname(*fd, (struct sockaddr *)&ss, &len) != 0) {
        snprintf(err, errlen, "getsockname failed: %s", strerror(errno));
        close(*fd);
        return FX_ERR_SYSTEM;
    }
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return FX_OK;
}

static int remaining(int64_t deadline)
{
    int64_t left = deadline - fx_now_ms();

    return left < 0 ? 0 : (left > 1000 ? 1000 : (int)left);
}

fx_status fx_sock_connect(const struct sockaddr *sa, socklen_t salen, int64_t deadline, int *fd,
                          char *err, size_t errlen)
{
    char name[64];
    int one        = 1;
    int soerr      = 0;
    socklen_t elen = sizeof(soerr);
    int s          = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    fx_sock_addr_str(sa, name, sizeof(name));
    if (s < 0) {
        snprintf(err, errlen, "socket for %s failed: %s", name, strerror(errno));
        return FX_ERR_SYSTEM;
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(s, sa, salen) != 0 && errno != EINPROGRESS) {
        snprintf(err, errlen, "connect to %s failed: %s", name, strerror(errno));
        close(s);
        return FX_ERR_CONNECTION;
    }
    for (;;) {
        struct pollfd p = {.fd = s, .events = POLLOUT};
        int ret         = poll(&p, 1, remaining(deadline));

        if (ret > 0) {
            break;
        }
        if ((ret < 0 && errno != EINTR) || fx_now_ms() >= deadline) {
            snprintf(err, errlen, "connect to %s timed out", name);
            close(s);
            return FX_ERR_TIMEOUT;
        }
    }
    if (getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &elen) != 0 || soerr != 0) {
        snprintf(err, errlen, "connect to %s failed: %s", name, strerror(soerr ? soerr : errno));
        close(s);
        return FX_ERR_CONNECTION;
    }
    *fd = s;
    return FX_OK;
}

static fx_status wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int ret         = poll(&p, 1, remaining(deadline));

        if (ret > 0) {
            return FX_OK;
        }
        if (ret < 0 && errno != EINTR) {
            return FX_ERR_SYSTEM;
        }
        if (fx_now_ms() >= deadline) {
            return FX_ERR_TIMEOUT;
        }
    }
}

fx_status fx_sock_read_all(int fd, void *buf, size_t len, int64_t deadline)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = recv(fd, (char *)buf + done, len - done, 0);
        fx_status status;

        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            return (n == 0 || errno == ECONNRESET) ? FX_ERR_PEER_FAILED : FX_ERR_SYSTEM;
        }
        status = wait_fd(fd, POLLIN, deadline);
        if (status != FX_OK) {
            return status;
        }
    }
    return FX_OK;
}

fx_status fx_sock_write_all(int fd, const void *buf, size_t len, int64_t deadline)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        fx_status status;

        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return (errno == EPIPE || errno == ECONNRESET) ? FX_ERR_PEER_FAILED : FX_ERR_SYSTEM;
        }
        status = wait_fd(fd, POLLOUT, deadline);
        if (status != FX_OK) {
            return status;
        }
    }
    return FX_OK;
}
