/*
 * relay.h - a TCP socket joined to a stream: the public connection on the
 * server, the connection to local_addr on the client.
 *
 * Bytes go socket -> tunnel with stream_send_from_fd() (straight into the
 * tunnel's ring) and tunnel -> socket with writev() from the tunnel's ring,
 * or from the stream's own buffer for what the socket could not take.
 * Half-close travels both ways: EOF from the socket becomes FIN on the
 * stream, FIN from the stream becomes shutdown(SHUT_WR) once all is written.
 * When the tunnel closes cleanly under it (a stop, a reload) while the
 * stream holds bytes for the socket, the relay still writes them, then
 * closes as a lingering close (reset if it had to drop the socket's own).
 */
#ifndef WMPROXY_RELAY_H
#define WMPROXY_RELAY_H

#include <string>
#include "mux.h"
#include "sock.h"

struct relay;

/* Called when the relay is gone, for the owner's counters and access log. */
typedef void (*relay_done_fn)(relay *r);

struct relay : io_handler, stream_end, deferred {
    int fd = -1;
    stream *s = nullptr;
    bool can_read = false, can_write = false;
    bool rdhup = false;           /* EOF is coming: read past short reads */
    bool write_error = false;
    bool connecting = false;      /* client: connect to local_addr in progress */
    bool eof = false;             /* the socket said EOF: FIN sent or to send */
    bool shut = false;            /* we shut down the socket's write side */
    bool closed = false;
    bool orphaned = false;        /* its tunnel closed cleanly: drains what the stream holds */
    bool dropped = false;         /* an orphan read and dropped the socket's bytes */
    std::string peer;             /* for the log */
    std::string what;             /* mapping name */
    uint64_t started = 0;
    uint64_t up = 0, down = 0;    /* bytes socket->tunnel, tunnel->socket */
    task resume;
    timer connect_timer;
    resolve_req *rq = nullptr;
    addr_list *addrs = nullptr;   /* while connecting: local_addr's addresses */
    std::string prefix;           /* bytes to write before the stream's (PROXY header) */
    relay_done_fn done = nullptr;
    void *user = nullptr;

    void on_io(unsigned events) override;
    size_t on_data(const iovec *iov, int n, size_t len) override;
    void on_rx_ready() override;
    void on_writable() override;
    void on_reset(uint8_t code, const char *why) override;
    bool on_orphan() override;
    ~relay() override;
};

/* An accepted socket joined to stream s. */
relay *relay_new(int fd, stream *s, const std::string &peer);
/* Client: connect to host:port for stream s; failure resets s with
 * RST_REFUSED / RST_TIMEOUT / RST_DNS. */
relay *relay_connect(const std::string &host, uint16_t port, stream *s, uint32_t timeout_ms);
/* Close the socket and release the stream (reset unless both sides finished). */
void relay_close(relay *r, uint8_t code);

#endif
