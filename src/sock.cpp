/*
 * sock.cpp - nonblocking socket helpers, asynchronous name resolution.
 */
#include "sock.h"
#include "reactor.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/sockios.h>
#endif

#include <unordered_map>
#include <vector>

std::string sock_addr_text(const sockaddr *sa)
{
    char host[INET6_ADDRSTRLEN], out[INET6_ADDRSTRLEN + 16];
    if (sa->sa_family == AF_INET) {
        const sockaddr_in *in = (const sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(out, sizeof out, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const sockaddr_in6 *in6 = (const sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof host);
            snprintf(out, sizeof out, "%s:%u", host, ntohs(in6->sin6_port));
        } else {
            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
            snprintf(out, sizeof out, "[%s]:%u", host, ntohs(in6->sin6_port));
        }
    } else {
        return "unknown";
    }
    return out;
}

uint16_t sock_addr_port(const sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

bool sock_same_endpoint(const sockaddr *a, const sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET) {
        const sockaddr_in *x = (const sockaddr_in *)a, *y = (const sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->sa_family == AF_INET6) {
        const sockaddr_in6 *x = (const sockaddr_in6 *)a, *y = (const sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
    }
    return false;
}

int resolve_numeric(const std::string &host, uint16_t port, sockaddr_buf *out)
{
    memset(&out->ss, 0, sizeof out->ss);
    sockaddr_in *in = (sockaddr_in *)&out->ss;
    sockaddr_in6 *in6 = (sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, host.c_str(), &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        out->len = sizeof *in;
        return 0;
    }
    if (inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        out->len = sizeof *in6;
        return 0;
    }
    return -1;
}

static int bind_one(const sockaddr *sa, socklen_t len, int type, bool dual)
{
    int fd = socket(sa->sa_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1, zero = 0;
    if (type == SOCK_STREAM)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (sa->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, dual ? &zero : &one, sizeof one);
    if (bind(fd, sa, len) < 0 || (type == SOCK_STREAM && listen(fd, 1024) < 0)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int sock_listen(const addr_conf &a, int type, std::string *err)
{
    sockaddr_buf b;
    int fd;
    const char *what = type == SOCK_STREAM ? "bind" : "bind udp";

    if (a.host.empty() || a.host == "*") {
        /* every address: one dual-stack IPv6 socket, else plain IPv4 */
        resolve_numeric("::", a.port, &b);
        fd = bind_one(b.sa(), b.len, type, true);
        if (fd < 0 && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL)) {
            resolve_numeric("0.0.0.0", a.port, &b);
            fd = bind_one(b.sa(), b.len, type, false);
        }
    } else if (resolve_numeric(a.host, a.port, &b) == 0) {
        fd = bind_one(b.sa(), b.len, type, false);
    } else {
        addrinfo hints = {}, *res;
        hints.ai_socktype = type;
        hints.ai_flags = AI_PASSIVE;
        char port[8];
        snprintf(port, sizeof port, "%u", a.port);
        int rc = getaddrinfo(a.host.c_str(), port, &hints, &res);
        if (rc != 0) {
            *err = std::string(what) + " " + a.text() + ": " + gai_strerror(rc);
            return -1;
        }
        fd = bind_one(res->ai_addr, res->ai_addrlen, type, false);
        freeaddrinfo(res);
    }
    if (fd < 0)
        *err = std::string(what) + " " + a.text() + ": " + strerror(errno);
    return fd;
}

int sock_accept(int lfd, sockaddr_buf *peer)
{
    peer->len = sizeof peer->ss;
    return accept4(lfd, (sockaddr *)&peer->ss, &peer->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

void acceptor::on_io(unsigned)
{
    if (paused || fd < 0 || !accepting())
        return;
    for (;;) {
        sockaddr_buf peer;
        int cfd = sock_accept(fd, &peer);
        if (cfd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            /* EMFILE/ENFILE/ENOBUFS: retrying now would spin; pause */
            log_warn("accept on %s: %s (pausing %dms)", addr.c_str(), strerror(errno), ACCEPT_RETRY_MS);
            paused = true;
            timer_arm(&retry, ACCEPT_RETRY_MS);
            return;
        }
        on_accept(cfd, peer);
        if (fd < 0 || !accepting())
            return;     /* on_accept stopped us */
    }
}

static void acceptor_retry(void *arg)
{
    acceptor *a = (acceptor *)arg;
    a->paused = false;
    a->on_io(EV_READ);
}

void acceptor_start(acceptor *a, int fd, const std::string &addr)
{
    a->fd = fd;
    a->addr = addr;
    a->retry.fn = acceptor_retry;
    a->retry.arg = a;
    reactor_add(fd, a);
}

void acceptor_stop(acceptor *a)
{
    timer_cancel(&a->retry);
    if (a->fd >= 0) {
        reactor_del(a->fd, a);
        close(a->fd);
        a->fd = -1;
    }
}

int sock_connect(const sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int addr_list_connect(addr_list *l, int err, addr_skip_fn skipped, void *arg)
{
    for (; l->next < l->n; err = errno) {
        if (err)
            skipped(arg, sock_addr_text(l->a[l->next - 1].sa()), err);
        const sockaddr_buf *a = &l->a[l->next++];
        int fd = sock_connect(a->sa(), a->len);
        if (fd >= 0)
            return fd;
    }
    errno = err ? err : EDESTADDRREQ;
    return -1;
}

int sock_connect_result(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

void sock_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void sock_notsent_lowat(int fd, int bytes)
{
#ifdef TCP_NOTSENT_LOWAT
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &bytes, sizeof bytes);
#else
    (void)fd;
    (void)bytes;
#endif
}

uint64_t sock_send_rate(int fd, uint64_t *window)
{
    *window = 0;
#if defined(__linux__) && defined(TCP_INFO)
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ti.tcpi_rtt == 0)
        return 0;
    *window = (uint64_t)ti.tcpi_snd_cwnd * ti.tcpi_snd_mss;
    return *window * 1000000 / ti.tcpi_rtt;
#else
    (void)fd;
    return 0;
#endif
}

void sock_linger0(int fd)
{
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

/* ---- lingering close ---- */

#define LINGER_TURN (1024 * 1024) /* bytes dropped per turn: a flood does not hold the loop */

int sock_discard(int fd, size_t max, size_t *dropped)
{
    char buf[16384];
    while (*dropped < max) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            *dropped += (size_t)n;
        else if (n == 0)
            return DISCARD_EOF;
        else if (errno == EAGAIN || errno == EINTR)
            return DISCARD_AGAIN;
        else
            return -1;
    }
    return DISCARD_MORE;
}

struct lingerer : io_handler, deferred {
    int fd = -1;
    timer deadline;
    task more;
    lingerer *prev = nullptr, *next = nullptr;   /* all of them, for sock_lingering_end() */
    void on_io(unsigned) override;
};

static lingerer *lingerers;

static void linger_end(void *arg)
{
    lingerer *l = (lingerer *)arg;
    if (l->fd < 0)
        return;
    reactor_del(l->fd, l);
    close(l->fd);
    l->fd = -1;
    if (l->prev)
        l->prev->next = l->next;
    else
        lingerers = l->next;
    if (l->next)
        l->next->prev = l->prev;
    timer_cancel(&l->deadline);
    task_cancel(&l->more);
    defer_delete(l);
}

static void linger_read(void *arg)
{
    lingerer *l = (lingerer *)arg;
    size_t dropped = 0;
    int r = sock_discard(l->fd, LINGER_TURN, &dropped);
    if (r == DISCARD_MORE)
        task_post(&l->more);
    else if (r != DISCARD_AGAIN)
        linger_end(l);   /* the peer closed too, or the connection failed */
}

void lingerer::on_io(unsigned)
{
    linger_read(this);
}

void sock_close_lingering(int fd, uint32_t ms)
{
    lingerer *l = new lingerer;
    l->fd = fd;
    if (shutdown(fd, SHUT_WR) < 0 || reactor_add(fd, l) < 0) {
        close(fd);
        delete l;
        return;
    }
    l->next = lingerers;
    if (lingerers)
        lingerers->prev = l;
    lingerers = l;
    l->deadline.fn = linger_end;
    l->deadline.arg = l;
    timer_arm(&l->deadline, ms);
    l->more.fn = linger_read;
    l->more.arg = l;
    task_post(&l->more);
}

size_t sock_lingering(void)
{
    size_t n = 0;
    for (lingerer *l = lingerers; l; l = l->next)
        n++;
    return n;
}

void sock_lingering_end(void)
{
    while (lingerers)
        linger_end(lingerers);
}

int sock_unacked(int fd)
{
    int n = 0;
#if defined(SIOCOUTQ)
    if (ioctl(fd, SIOCOUTQ, &n) < 0)
        n = 0;
#elif defined(SO_NWRITE)
    socklen_t l = sizeof n;
    if (getsockopt(fd, SOL_SOCKET, SO_NWRITE, &n, &l) < 0)
        n = 0;
#elif defined(FIONWRITE)
    if (ioctl(fd, FIONWRITE, &n) < 0)
        n = 0;
#endif
    return n;
}

/* ---- resolver ----
 * One job per name being looked up: the requests for that name wait on it
 * (each with its own port) and share its answer. Jobs beyond the threads
 * wait in a queue of at most RESOLVE_QUEUE names; a request whose owner
 * gave up is freed at once, and a queued job nobody waits for any more
 * leaves the queue. A job already on a thread finishes there (getaddrinfo
 * cannot be stopped) and is then dropped. */

struct resolve_job;

struct resolve_req {
    resolve_job *job = nullptr;     /* null: answered by a task (numeric, busy) */
    uint16_t port;
    resolve_fn fn;
    void *arg;
    resolve_req *prev = nullptr, *next = nullptr;   /* the job's waiters */
    int status = 0;                 /* a task's answer */
    sockaddr_buf addr;
    std::string err;
};

struct resolve_job {
    std::string host;
    bool running = false;
    int status = 0;
    addr_list addrs;
    std::string err;
    resolve_req *waiters = nullptr;
    resolve_job *qprev = nullptr, *qnext = nullptr;  /* the queue, while queued */
};

struct resolver_pipe : io_handler {
    int rfd = -1, wfd = -1;
    void on_io(unsigned) override;
};

static resolver_pipe rp;
static int running;
static size_t queued;
static resolve_job *queue_head, *queue_tail;
/* Never destroyed: at exit a thread may still be inside getaddrinfo() with
 * its job, or have handed it to the pipe; they stay reachable from here. */
static std::unordered_map<std::string, resolve_job *> &jobs =   /* queued or running */
    *new std::unordered_map<std::string, resolve_job *>;
static std::vector<resolve_req *> &answered = *new std::vector<resolve_req *>;   /* numeric or busy */
static task answer_task;

static void *resolve_thread(void *p)
{
    resolve_job *j = (resolve_job *)p;
    addrinfo hints = {}, *res;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    j->status = getaddrinfo(j->host.c_str(), nullptr, &hints, &res);
    if (j->status == 0) {
        for (addrinfo *ai = res; ai && j->addrs.n < ADDRS_MAX; ai = ai->ai_next) {
            if (ai->ai_addrlen > sizeof j->addrs.a[0].ss)
                continue;
            sockaddr_buf *b = &j->addrs.a[j->addrs.n++];
            memcpy(&b->ss, ai->ai_addr, ai->ai_addrlen);
            b->len = ai->ai_addrlen;
        }
        freeaddrinfo(res);
        if (j->addrs.n == 0)
            j->status = EAI_NONAME;
    }
    if (j->status != 0)
        j->err = gai_strerror(j->status);
    /* a pointer is smaller than PIPE_BUF: the write is atomic */
    ssize_t n = write(rp.wfd, &j, sizeof j);
    (void)n;
    return nullptr;
}

static void spawn(resolve_job *j)
{
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 128 * 1024);
    j->running = true;
    if (pthread_create(&th, &at, resolve_thread, j) != 0) {
        j->status = EAI_AGAIN;
        j->err = "cannot start a resolver thread";
        ssize_t n = write(rp.wfd, &j, sizeof j);
        (void)n;
    }
    pthread_attr_destroy(&at);
    running++;
}

static void dequeue(resolve_job *j)
{
    (j->qprev ? j->qprev->qnext : queue_head) = j->qnext;
    (j->qnext ? j->qnext->qprev : queue_tail) = j->qprev;
    j->qprev = j->qnext = nullptr;
    queued--;
}

static void set_port(sockaddr_buf *b, uint16_t port)
{
    if (b->ss.ss_family == AF_INET)
        ((sockaddr_in *)&b->ss)->sin_port = htons(port);
    else if (b->ss.ss_family == AF_INET6)
        ((sockaddr_in6 *)&b->ss)->sin6_port = htons(port);
}

void resolver_pipe::on_io(unsigned)
{
    resolve_job *j;
    while (read(rfd, &j, sizeof j) == (ssize_t)sizeof j) {
        running--;
        if (queue_head) {
            resolve_job *next = queue_head;
            dequeue(next);
            spawn(next);
        }
        jobs.erase(j->host);
        /* each waiter is unlinked before its callback, which may start or
         * cancel other lookups (never this job's: it left the map) */
        while (resolve_req *r = j->waiters) {
            j->waiters = r->next;
            if (j->waiters)
                j->waiters->prev = nullptr;
            if (j->status == 0) {
                addr_list a = j->addrs;
                for (int i = 0; i < a.n; i++)
                    set_port(&a.a[i], r->port);
                r->fn(r->arg, 0, &a, "");
            } else {
                r->fn(r->arg, j->status, nullptr, j->err.c_str());
            }
            delete r;
        }
        delete j;
    }
}

static void run_answered(void *)
{
    std::vector<resolve_req *> now;
    now.swap(answered);
    for (resolve_req *r : now) {
        if (!r->fn)
            continue;       /* cancelled */
        if (r->status == 0) {
            addr_list a;
            a.a[0] = r->addr;
            a.n = 1;
            r->fn(r->arg, 0, &a, "");
        } else {
            r->fn(r->arg, r->status, nullptr, r->err.c_str());
        }
    }
    for (resolve_req *r : now)
        delete r;
}

/* Answer r from the loop, not from inside resolve_start. */
static resolve_req *answer_later(resolve_req *r)
{
    answered.push_back(r);
    answer_task.fn = run_answered;
    task_post(&answer_task);
    return r;
}

resolve_req *resolve_start(const std::string &host, uint16_t port, resolve_fn fn, void *arg)
{
    resolve_req *r = new resolve_req;
    r->port = port;
    r->fn = fn;
    r->arg = arg;
    if (resolve_numeric(host, port, &r->addr) == 0)
        return answer_later(r);
    if (rp.rfd < 0) {
        int p[2];
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
            delete r;
            return nullptr;
        }
        rp.rfd = p[0];
        rp.wfd = p[1];
        /* the writer must never block: threads are few, the pipe is large */
        fcntl(rp.wfd, F_SETFL, 0);
        reactor_add(rp.rfd, &rp);
    }
    auto it = jobs.find(host);
    resolve_job *j = it == jobs.end() ? nullptr : it->second;
    if (!j) {
        if (running >= RESOLVE_THREADS && queued >= RESOLVE_QUEUE) {
            r->status = EAI_AGAIN;
            r->err = "resolver busy: too many names waiting";
            return answer_later(r);
        }
        j = new resolve_job;
        j->host = host;
        jobs[host] = j;
        if (running < RESOLVE_THREADS) {
            spawn(j);
        } else {
            j->qprev = queue_tail;
            (queue_tail ? queue_tail->qnext : queue_head) = j;
            queue_tail = j;
            queued++;
        }
    }
    r->job = j;
    r->next = j->waiters;
    if (r->next)
        r->next->prev = r;
    j->waiters = r;
    return r;
}

void resolve_cancel(resolve_req *r)
{
    if (!r)
        return;
    resolve_job *j = r->job;
    if (!j) {
        r->fn = nullptr;    /* in answered: run_answered frees it */
        return;
    }
    (r->prev ? r->prev->next : j->waiters) = r->next;
    if (r->next)
        r->next->prev = r->prev;
    delete r;
    if (!j->waiters && !j->running) {
        dequeue(j);
        jobs.erase(j->host);
        delete j;
    }
}

size_t resolve_pending(void)
{
    return jobs.size() + answered.size();
}
