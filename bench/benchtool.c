/*
 * benchtool.c - load generators and services for scripts/bench (loopback only).
 *
 *   benchtool echo PORT               echo service on 127.0.0.1:PORT (0: pick one);
 *                                     prints "port N" once listening. A connection whose
 *                                     first byte is 'Q' gets its first 64 bytes echoed and is
 *                                     then closed by the service (so TIME_WAIT stays on the
 *                                     listening side); any other is echoed until EOF.
 *   benchtool rr PORT SECONDS         64-byte ping-pong on one connection (TCP_NODELAY);
 *                                     prints JSON {n, rps, p50_us, p99_us}
 *   benchtool cps PORT SECONDS CONC   new connections: connect, send 64 bytes ('Q...'), read
 *                                     the 64 back and the service's EOF, close; CONC at once;
 *                                     prints JSON {n, cps, errors, p50_us, p99_us}
 *   benchtool hold PORT N             open N connections (1-byte echo each, 200 at a time),
 *                                     print "held N" (or "failed K ..."), then wait for SIGTERM
 *   benchtool relay PORT TARGET       the floor of any user-space proxy: one thread, edge-
 *                                     triggered epoll, read() into a 256 KiB buffer per
 *                                     direction and write() it on, nothing else (no framing,
 *                                     no parsing); prints "port N" once listening
 *
 * Every mode raises RLIMIT_NOFILE to its hard limit. Only 127.0.0.1 is used.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

static void die(const char *what)
{
    fprintf(stderr, "benchtool: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void raise_nofile(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

static struct sockaddr_in addr_of(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }
static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

/* ---- echo service ---- */

struct econn {
    int mode;          /* 0 unknown, 1 echo, 2 one-shot */
    size_t echoed;
    char *pend;        /* bytes the socket could not take yet */
    size_t npend;
};

static void econn_close(int ep, struct econn *c, int fd)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(c->pend);
    memset(c, 0, sizeof *c);
}

/* A nonblocking listener on 127.0.0.1:port (0: any), announced on stdout
 * as "port N". */
static int listen_print(int port)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = addr_of(port);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    if (listen(lfd, 4096) < 0)
        die("listen");
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    printf("port %d\n", ntohs(a.sin_port));
    fflush(stdout);
    return lfd;
}

static __attribute__((noreturn)) void echo_main(int port)
{
    int lfd = listen_print(port);
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    size_t maxfd = r.rlim_cur + 16;
    struct econn *conns = calloc(maxfd, sizeof *conns);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    static char buf[256 * 1024];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno == EINTR)
            continue;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0)
                        break;
                    if ((size_t)c >= maxfd) {
                        close(c);
                        continue;
                    }
                    nodelay(c);
                    memset(&conns[c], 0, sizeof conns[c]);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            struct econn *c = &conns[fd];
            if (c->npend) {   /* writable again */
                ssize_t w = write(fd, c->pend, c->npend);
                if (w < 0 && errno != EAGAIN) {
                    econn_close(ep, c, fd);
                    continue;
                }
                if (w > 0) {
                    memmove(c->pend, c->pend + w, c->npend - (size_t)w);
                    c->npend -= (size_t)w;
                }
                if (c->npend == 0) {
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                }
                continue;
            }
            ssize_t rd = read(fd, buf, sizeof buf);
            if (rd < 0 && errno == EAGAIN)
                continue;
            if (rd <= 0) {
                econn_close(ep, c, fd);
                continue;
            }
            if (c->mode == 0)
                c->mode = buf[0] == 'Q' ? 2 : 1;
            ssize_t w = write(fd, buf, (size_t)rd);
            if (w < 0) {
                if (errno != EAGAIN) {
                    econn_close(ep, c, fd);
                    continue;
                }
                w = 0;
            }
            c->echoed += (size_t)w;
            if (w < rd) {
                c->pend = malloc((size_t)(rd - w));
                memcpy(c->pend, buf + w, (size_t)(rd - w));
                c->npend = (size_t)(rd - w);
                struct epoll_event ce = {.events = EPOLLOUT, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                continue;
            }
            if (c->mode == 2 && c->echoed >= MSG)
                econn_close(ep, c, fd);
        }
    }
}

/* ---- round trips ---- */

static int connect_blocking(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = addr_of(port);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    nodelay(fd);
    return fd;
}

static int read_full(int fd, char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int rr_main(int port, double secs)
{
    int fd = connect_blocking(port);
    char msg[MSG], in[MSG];
    memset(msg, 'P', sizeof msg);
    size_t cap = 1 << 20, n = 0;
    double *lat = malloc(cap * sizeof *lat);
    /* warm-up: 0.2 s, not counted */
    double t0 = now(), end = t0 + 0.2;
    while (now() < end) {
        if (write(fd, msg, MSG) != MSG || read_full(fd, in, MSG) < 0)
            die("rr warm-up");
    }
    t0 = now();
    end = t0 + secs;
    double t = t0;
    while (t < end) {
        if (write(fd, msg, MSG) != MSG || read_full(fd, in, MSG) < 0)
            die("rr");
        double t2 = now();
        if (n == cap) {
            cap *= 2;
            lat = realloc(lat, cap * sizeof *lat);
        }
        lat[n++] = t2 - t;
        t = t2;
    }
    double el = t - t0;
    close(fd);
    qsort(lat, n, sizeof *lat, cmp_double);
    printf("{\"n\": %zu, \"rps\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f}\n", n, n / el,
           pct(lat, n, 0.5) * 1e6, pct(lat, n, 0.99) * 1e6);
    return 0;
}

/* ---- new connections per second ---- */

struct slot {
    int fd;
    int state;       /* 1 connecting, 2 reading */
    size_t got;
    double t0;
};

static int slot_start(int ep, struct slot *s, int port)
{
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0)
        return -1;
    nodelay(s->fd);
    struct sockaddr_in a = addr_of(port);
    s->t0 = now();
    s->got = 0;
    int r = connect(s->fd, (struct sockaddr *)&a, sizeof a);
    if (r < 0 && errno != EINPROGRESS) {
        close(s->fd);
        s->fd = -1;
        return -1;
    }
    s->state = 1;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    return 0;
}

static int cps_main(int port, double secs, int conc)
{
    int ep = epoll_create1(0);
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    size_t cap = 1 << 16, n = 0, errors = 0;
    double *lat = malloc(cap * sizeof *lat);
    char msg[MSG], buf[4096];
    memset(msg, 'Q', sizeof msg);
    double t0 = now(), end = t0 + secs, stop_at = end + 10;
    int active = 0;
    for (int i = 0; i < conc; i++) {
        if (slot_start(ep, &slots[i], port) == 0)
            active++;
        else
            errors++;
    }
    struct epoll_event evs[256];
    while (active > 0 && now() < stop_at) {
        int k = epoll_wait(ep, evs, 256, 1000);
        for (int i = 0; i < k; i++) {
            struct slot *s = evs[i].data.ptr;
            int done = 0, failed = 0;
            if (s->state == 1) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || write(s->fd, msg, MSG) != MSG) {
                    failed = 1;
                } else {
                    s->state = 2;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                }
            } else {
                for (;;) {
                    ssize_t r = read(s->fd, buf, sizeof buf);
                    if (r > 0) {
                        s->got += (size_t)r;
                        continue;
                    }
                    if (r == 0) {
                        if (s->got == MSG)
                            done = 1;
                        else
                            failed = 1;
                    } else if (errno != EAGAIN) {
                        failed = 1;
                    }
                    break;
                }
            }
            if (!done && !failed)
                continue;
            double t = now();
            epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
            close(s->fd);
            s->fd = -1;
            if (done && s->t0 < end) {
                if (n == cap) {
                    cap *= 2;
                    lat = realloc(lat, cap * sizeof *lat);
                }
                lat[n++] = t - s->t0;
            }
            if (failed)
                errors++;
            active--;
            if (t < end) {
                if (slot_start(ep, s, port) == 0)
                    active++;
                else
                    errors++;
            }
        }
    }
    double el = now() - t0;
    if (el < secs)
        el = secs;
    /* connections still open after the grace period count as errors */
    for (int i = 0; i < conc; i++)
        if (slots[i].fd >= 0 && slots[i].state) {
            close(slots[i].fd);
            errors++;
        }
    qsort(lat, n, sizeof *lat, cmp_double);
    printf("{\"n\": %zu, \"cps\": %.1f, \"errors\": %zu, \"p50_us\": %.1f, \"p99_us\": %.1f}\n", n, n / secs,
           errors, pct(lat, n, 0.5) * 1e6, pct(lat, n, 0.99) * 1e6);
    (void)el;
    return 0;
}

/* ---- hold N idle connections ---- */

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static int hold_main(int port, int total)
{
    int *fds = malloc((size_t)total * sizeof *fds);
    int ok = 0, failed = 0;
    struct sockaddr_in a = addr_of(port);
    int ep = epoll_create1(0);
    while (ok + failed < total) {
        int batch = total - ok - failed < 200 ? total - ok - failed : 200;
        int base = ok;
        int pending = 0;
        for (int i = 0; i < batch; i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0 || write(fd, "H", 1) != 1) {
                fprintf(stderr, "benchtool hold: connect %d: %s\n", ok + failed + i, strerror(errno));
                if (fd >= 0)
                    close(fd);
                failed++;
                continue;
            }
            nonblock(fd);
            fds[base + pending++] = fd;
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        /* every connection of the batch must echo its byte: the stream is up end to end */
        int echoed = 0, seen = 0;
        double until = now() + 20;
        struct epoll_event evs[256];
        while (seen < pending && now() < until) {
            int k = epoll_wait(ep, evs, 256, 500);
            for (int i = 0; i < k; i++) {
                char c;
                int fd = evs[i].data.fd;
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                seen++;
                if (read(fd, &c, 1) == 1)
                    echoed++;
            }
        }
        failed += pending - echoed;
        ok += pending;   /* fds kept open either way */
        if (failed > 0)
            break;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    if (failed)
        printf("failed %d of %d\n", failed, total);
    else
        printf("held %d\n", ok);
    fflush(stdout);
    while (!stop)
        pause();
    return 0;
}

/* ---- a bare relay: what a proxy costs with nothing but read() and write() ---- */

struct half {
    int from, to;
    char *buf;
    size_t off, len;
    int eof;
};

struct rconn {
    struct half up, down;   /* client -> target, target -> client */
    int open;
};

/* Move bytes until either side says EAGAIN. Returns -1 on an error. */
static int half_pump(struct half *h)
{
    for (;;) {
        if (h->len) {
            ssize_t w = write(h->to, h->buf + h->off, h->len);
            if (w < 0)
                return errno == EAGAIN ? 0 : -1;
            h->off += (size_t)w;
            h->len -= (size_t)w;
            continue;
        }
        if (h->eof)
            return 0;
        ssize_t r = read(h->from, h->buf, 256 * 1024);
        if (r < 0)
            return errno == EAGAIN ? 0 : -1;
        if (r == 0) {
            h->eof = 1;
            shutdown(h->to, SHUT_WR);
            return 0;
        }
        h->off = 0;
        h->len = (size_t)r;
    }
}

static struct rconn closed_conn;    /* stands in for one freed during a batch */

static void rconn_close(struct rconn *c)
{
    close(c->up.from);
    close(c->up.to);
    free(c->up.buf);
    free(c->down.buf);
    free(c);
}

static __attribute__((noreturn)) void relay_main(int port, int target)
{
    int lfd = listen_print(port);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        for (int i = 0; i < n; i++) {
            struct rconn *c = evs[i].data.ptr;
            if (!c) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int tfd = connect_blocking(target);
                    nonblock(tfd);
                    nodelay(cfd);
                    c = calloc(1, sizeof *c);
                    c->up = (struct half){cfd, tfd, malloc(256 * 1024), 0, 0, 0};
                    c->down = (struct half){tfd, cfd, malloc(256 * 1024), 0, 0, 0};
                    c->open = 1;
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
                    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ce);
                    half_pump(&c->up);
                    half_pump(&c->down);
                }
                continue;
            }
            if (!c->open)
                continue;
            if (half_pump(&c->up) < 0 || half_pump(&c->down) < 0 ||
                (c->up.eof && c->down.eof && !c->up.len && !c->down.len)) {
                c->open = 0;    /* freed after this batch: another event may name it */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->up.from, NULL);
                epoll_ctl(ep, EPOLL_CTL_DEL, c->up.to, NULL);
                for (int j = i + 1; j < n; j++)
                    if (evs[j].data.ptr == c)
                        evs[j].data.ptr = &closed_conn;
                rconn_close(c);
            }
        }
    }
}

int main(int argc, char **argv)
{
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && !strcmp(argv[1], "echo"))
        echo_main(atoi(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "rr"))
        return rr_main(atoi(argv[2]), atof(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "cps"))
        return cps_main(atoi(argv[2]), atof(argv[3]), atoi(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "hold"))
        return hold_main(atoi(argv[2]), atoi(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "relay"))
        relay_main(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: benchtool echo PORT | rr PORT SECONDS | cps PORT SECONDS CONC | hold PORT N"
                    " | relay PORT TARGET\n");
    return 2;
}
