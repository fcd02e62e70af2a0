/*
 * The kernel's per-socket TCP counters (TCP_INFO), kept apart from tcp.c because the kernel's
 * struct tcp_info (linux/tcp.h) and the C library's (netinet/tcp.h) cannot share a file.
 */
#ifndef FX_TCP_INFO_H
#define FX_TCP_INFO_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Bytes the peer acknowledged on socket fd, and the microseconds the socket had data to send
 * or in flight (busy + send-buffer-limited). Time limited by the receiver's window is left out:
 * then the receiving process, not the link, holds the data back (a ring's back-pressure would
 * otherwise make the link into a slow host look slow too). False when the kernel is too old to
 * report them (before 4.10) or getsockopt fails.
 */
bool fx_tcp_sock_wire(int fd, uint64_t *bytes_acked, uint64_t *busy_us);

#endif /* FX_TCP_INFO_H */
