/* TCP_INFO counters of one socket (tcp_info.h). */
#include "transports/tcp/tcp_info.h"

#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

bool fx_tcp_sock_wire(int fd, uint64_t *bytes_acked, uint64_t *busy_us)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_sndbuf_limited) + sizeof(ti.tcpi_sndbuf_limited)) {
        return false;
    }
    *bytes_acked = ti.tcpi_bytes_acked;
    *busy_us     = ti.tcpi_busy_time + ti.tcpi_sndbuf_limited;
    return true;
}
