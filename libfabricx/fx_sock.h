/* Blocking-with-deadline socket helpers for the bootstrap (the data path lives in transports/),
 * and the clock and address formatting that transports share. */
#ifndef FX_SOCK_H
#define FX_SOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "fabricx.h"

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t fx_now_ms(void);
/* Microseconds on CLOCK_MONOTONIC. */
int64_t fx_now_us(void);

/* "1.2.3.4:56" or "[::1]:56"; IPv4-mapped IPv6 addresses print as IPv4. */
void fx_sock_addr_str(const struct sockaddr *sa, char *buf, size_t len);

/*
 * Listens on the wildcard address (IPv6 dual-stack, else IPv4) at `port` (0: any); *bound_port
 * gets the port. Close-on-exec, non-blocking, SO_REUSEADDR.
 */
fx_status fx_sock_listen_any(uint16_t port, int *fd, uint16_t *bound_port, char *err,
                             size_t errlen);

/* Connects to sa within the deadline (absolute, fx_now_ms()); the socket stays non-blocking. */
fx_status fx_sock_connect(const struct sockaddr *sa, socklen_t salen, int64_t deadline, int *fd,
                          char *err, size_t errlen);

/* Reads/writes exactly len bytes before the deadline, on a non-blocking socket. FX_ERR_TIMEOUT,
 * FX_ERR_PEER_FAILED (EOF or reset) or FX_ERR_SYSTEM. */
fx_status fx_sock_read_all(int fd, void *buf, size_t len, int64_t deadline);
fx_status fx_sock_write_all(int fd, const void *buf, size_t len, int64_t deadline);

#endif /* FX_SOCK_H */
