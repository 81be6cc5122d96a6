/*
 * sock.h - nonblocking socket helpers and asynchronous name resolution.
 */
#ifndef WMPROXY_SOCK_H
#define WMPROXY_SOCK_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <string>
#include "conf.h"
#include "reactor.h"

struct sockaddr_buf {
    sockaddr_storage ss;
    socklen_t len = 0;
    const sockaddr *sa() const { return (const sockaddr *)&ss; }
};

/* "1.2.3.4:80" or "[::1]:80" */
std::string sock_addr_text(const sockaddr *sa);
uint16_t sock_addr_port(const sockaddr *sa);
/* Same family, address and port (IPv4 or IPv6; flow label and zone aside). */
bool sock_same_endpoint(const sockaddr *a, const sockaddr *b);

/*
 * Bind and listen (SOCK_STREAM) or bind (SOCK_DGRAM) on a, which may name
 * every address (empty host: [::] dual-stack, or 0.0.0.0 where IPv6 is
 * absent). The host must be numeric or resolvable at start-up (this is the
 * only blocking resolution: it happens before the loop serves anything).
 * Returns the fd, or -1 with *err = "bind 0.0.0.0:8001: Address already in use".
 */
int sock_listen(const addr_conf &a, int type, std::string *err);
/* accept4 nonblocking; returns fd or -1 (errno EAGAIN when drained). */
int sock_accept(int lfd, sockaddr_buf *peer);
/*
 * A listening socket served edge-triggered: each event accepts until EAGAIN
 * (the edge will not come again) and hands every connection to
 * on_accept(). When accept fails for lack of descriptors or buffers it
 * pauses ACCEPT_RETRY_MS and tries again, rather than spin or lose the edge.
 */
#define ACCEPT_RETRY_MS 100

struct acceptor : io_handler {
    int fd = -1;
    std::string addr;           /* for log lines */
    timer retry;
    bool paused = false;
    void on_io(unsigned events) override;
    virtual void on_accept(int cfd, const sockaddr_buf &peer) = 0;
    /* false while the owner is going away: events are ignored */
    virtual bool accepting() const { return true; }
protected:
    ~acceptor() {}
};
/* Serve listening socket fd, opened on addr. */
void acceptor_start(acceptor *a, int fd, const std::string &addr);
/* Cancel the retry, leave the poller and close the socket. */
void acceptor_stop(acceptor *a);

/* Start a nonblocking connect. Returns fd (connection in progress or done),
 * or -1 with errno. */
int sock_connect(const sockaddr *sa, socklen_t len);

/* The addresses of a name, in getaddrinfo()'s order (RFC 6724: the best
 * first), and which to try next. A connect that fails goes on to the next
 * address, as nginx and haproxy do: a name whose first address refuses
 * (a dead server, a service bound to only one of them) still works. */
#define ADDRS_MAX 8
struct addr_list {
    sockaddr_buf a[ADDRS_MAX];
    int n = 0;
    int next = 0;
};
/* Start a nonblocking connect to the next address of l that takes one.
 * err is the failure of the address tried before (0 at first); every
 * failure that another address follows goes to skipped() for the log.
 * Returns fd, or -1 with errno (the last address's failure). */
typedef void (*addr_skip_fn)(void *arg, const std::string &addr, int err);
int addr_list_connect(addr_list *l, int err, addr_skip_fn skipped, void *arg);
static inline bool addr_list_more(const addr_list *l) { return l && l->next < l->n; }
/* The result of a nonblocking connect: 0 connected, else the errno. */
int sock_connect_result(int fd);
void sock_nodelay(int fd);
/* Let the kernel hold at most bytes not yet sent (TCP_NOTSENT_LOWAT, where
 * the system has it): the rest waits in our buffers, where later data of
 * other streams can still pass it. */
void sock_notsent_lowat(int fd, int bytes);
/* The rate TCP lets fd send at now, in bytes per second: its congestion
 * window (*window, bytes) over its smoothed round-trip time. 0 (and
 * *window 0) where the system does not tell. */
uint64_t sock_send_rate(int fd, uint64_t *window);
/* On close, send RST instead of FIN (to carry a reset). */
void sock_linger0(int fd);
/* Close fd after our last bytes (a lingering close): shut our write side,
 * a FIN behind what the kernel still has to send, then read and drop what
 * the peer sends until it closes too, or ms pass. Closed at once with
 * input unread, or with input arriving after, the kernel would reset the
 * connection and throw away what it had not sent yet. */
void sock_close_lingering(int fd, uint32_t ms);
/* Connections sock_close_lingering() still holds. */
size_t sock_lingering(void);
/* Close them all now (the process stops). */
void sock_lingering_end(void);
/* Bytes written to fd that the peer has not acknowledged yet (0 where the
 * system cannot tell). */
int sock_unacked(int fd);
/* Read and drop what fd has, at most max bytes (*dropped counts them).
 * Returns DISCARD_AGAIN (nothing more for now), DISCARD_MORE (max reached:
 * go on in a later turn), DISCARD_EOF, or -1 with errno. */
enum { DISCARD_AGAIN = 0, DISCARD_MORE = 1, DISCARD_EOF = 2 };
int sock_discard(int fd, size_t max, size_t *dropped);

/* ---- asynchronous resolution ----
 * getaddrinfo() blocks, so each name is looked up on a short-lived helper
 * thread (at most RESOLVE_THREADS at once) that hands the result back to
 * the loop through a pipe; requests for a name already being looked up
 * share that lookup. Names beyond the threads wait in a queue of at most
 * RESOLVE_QUEUE; past it a request fails at once ("resolver busy"). A
 * cancelled request is freed at once, and a queued name nobody waits for
 * leaves the queue. A numeric host is answered without a thread. The loop
 * never waits, but lookups that hang hold their threads until the
 * resolver's own timeout (resolv.conf), and names queued behind them wait. */
#define RESOLVE_THREADS 16
#define RESOLVE_QUEUE 256

struct resolve_req;
/* status: 0 and the addresses (at least one) in *addrs, or an EAI_* code
 * with text in err */
typedef void (*resolve_fn)(void *arg, int status, const addr_list *addrs, const char *err);

/* The callback always runs later from the loop, never inside this call.
 * Returns a handle for resolve_cancel, or nullptr when out of memory. */
resolve_req *resolve_start(const std::string &host, uint16_t port, resolve_fn fn, void *arg);
/* The callback will not be called; r is freed. Only before the callback ran. */
void resolve_cancel(resolve_req *r);
/* Names being looked up or queued, and answers not yet delivered. */
size_t resolve_pending(void);
/* A parsed numeric address, or -1 when host is not numeric. */
int resolve_numeric(const std::string &host, uint16_t port, sockaddr_buf *out);

#endif
