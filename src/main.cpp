/*
 * main.cpp - command line, start-up, signals, exit status (SPEC section 2).
 */
#include "conf.h"
#include "log.h"
#include "mux.h"
#include "reactor.h"
#include "roles.h"
#include "sock.h"
#include "tls.h"
#include "version.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_CONF "/etc/wmproxy/wmproxy.ini"

static conf cf;
static bool draining;
#define TERM_LINGER_MS 1000   /* TERM: how long peers have to read our GOAWAY */
static bool detached;
static timer drain_timer;
static int pid_fd = -1;             /* our pid file, locked while we run */
static std::string pid_path;        /* where we put it */

/* Where the logs go for configuration c: under -d without log_file, syslog
 * (stderr is /dev/null then). */
static std::string log_target_of(const conf &c)
{
    return c.log_file.empty() && detached ? "syslog" : c.log_file;
}

static std::string log_target;      /* the one open now */

/*
 * pid_file: a new file, locked for as long as we run and renamed over the
 * path, so that -s can tell a live daemon (the lock is held) from a file a
 * crash left behind, and a daemon still draining after a graceful restart
 * never removes the file its successor wrote.
 */
static int pid_file_write(const std::string &path)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    std::string tmp = path + "." + std::to_string((long)getpid()) + ".tmp";
    int fd = open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0 || write(fd, buf, (size_t)n) != n ||
        rename(tmp.c_str(), path.c_str()) < 0) {
        int e = errno;
        unlink(tmp.c_str());
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Remove our pid file, unless another daemon's now stands at its path. */
static void pid_file_remove(int fd, const std::string &path)
{
    struct stat a, b;
    if (fd < 0)
        return;
    if (stat(path.c_str(), &a) == 0 && fstat(fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        unlink(path.c_str());
    close(fd);
}

/* A reload that names another pid_file moves ours there. */
static void pid_file_move(const std::string &path)
{
    if (path == pid_path)
        return;
    int fd = -1;
    if (!path.empty() && (fd = pid_file_write(path)) < 0) {
        log_error("reload: pid_file %s: %s (keeping %s)", path.c_str(), strerror(errno),
                  pid_path.empty() ? "none" : pid_path.c_str());
        return;
    }
    pid_file_remove(pid_fd, pid_path);
    pid_fd = fd;
    pid_path = path;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: wmproxyd [-f FILE] [-t] [-d] [-s reload|stop|quit] [-v] [-h]\n"
            "  -f FILE   configuration file (default " DEFAULT_CONF ")\n"
            "  -t        check the configuration and exit\n"
            "  -d        detach into the background once every listener is bound\n"
            "  -s SIG    send reload|stop|quit to the daemon named by pid_file\n"
            "  -v        print the version and exit\n"
            "  -h        this help\n");
}

/* Streams of the tunnels, and those still draining after theirs closed */
static size_t streams(void)
{
    return (cf.role_ == ROLE_SERVER ? server_streams() : client_streams()) + stream_orphans();
}

static size_t unsent(void)
{
    return cf.role_ == ROLE_SERVER ? server_unsent() : client_unsent();
}

static bool stopped;
static timer linger_wait;
static uint64_t linger_until;

/* The tunnels' connections close once their peers have read our GOAWAY
 * (sock_close_lingering), and streams our stop left holding bytes write
 * them out (orphans): the loop runs on until they are done, or until.
 * Orphans still holding bytes then are cut (a reset, not a FIN that would
 * make what they delivered look whole). */
static void finish(void)
{
    stream_orphans_cut();
    sock_lingering_end();
    reactor_stop();
}

static void wait_lingering(void *)
{
    if ((sock_lingering() == 0 && stream_orphans() == 0) || now_ms() >= linger_until)
        return finish();
    timer_arm(&linger_wait, 20);
}

static void stop_now(uint64_t until)
{
    if (stopped)
        return finish();   /* a second signal, or QUIT's deadline: at once */
    stopped = true;
    timer_cancel(&drain_timer);   /* a TERM during a QUIT drain: its own wait, not the drain's end */
    if (cf.role_ == ROLE_SERVER)
        server_stop(false);
    else
        client_stop(false);
    linger_until = until;
    linger_wait.fn = wait_lingering;
    wait_lingering(nullptr);
}

static uint64_t quit_deadline;

static void drain_check(void *)
{
    /* done when the streams are gone and their last bytes have left */
    if (streams() == 0 && unsent() == 0) {
        log_info("drained, stopping");
        return stop_now(quit_deadline);
    }
    timer_arm(&drain_timer, 100);
}

static void on_signal(int signo, void *)
{
    switch (signo) {
    case SIGTERM:
    case SIGINT:
        log_info("stopping (signal %s)", signo == SIGTERM ? "TERM" : "INT");
        /* at once, but for a moment for the peers to read our GOAWAY */
        stop_now(now_ms() + (cf.shutdown_timeout_ms < TERM_LINGER_MS ? cf.shutdown_timeout_ms : TERM_LINGER_MS));
        break;
    case SIGQUIT: {
        if (draining || stopped)
            break;
        draining = true;
        log_info("stopping gracefully: no new connections, draining streams for up to %ums",
                 cf.shutdown_timeout_ms);
        if (cf.role_ == ROLE_SERVER)
            server_stop(true);
        else
            client_stop(true);
        static timer deadline;
        deadline.fn = [](void *) {
            if (!stopped)
                log_info("shutdown_timeout reached with %zu stream(s) open and %zu byte(s) unsent, stopping",
                         streams(), unsent());
            stop_now(now_ms());
        };
        quit_deadline = now_ms() + cf.shutdown_timeout_ms;
        timer_arm(&deadline, cf.shutdown_timeout_ms);
        drain_timer.fn = drain_check;
        drain_check(nullptr);
        break;
    }
    case SIGHUP: {
        conf next;
        std::string err;
        if (draining || stopped) {
            /* a reload would open the listeners QUIT closed */
            log_warn("reload ignored: stopping gracefully");
            break;
        }
        if (conf_load(cf.path.c_str(), &next, &err) < 0) {
            log_error("reload failed, keeping the running configuration: %s", err.c_str());
            break;
        }
        int r = cf.role_ == ROLE_SERVER ? server_reload(next, &err) : client_reload(next, &err);
        if (r < 0) {
            log_error("reload failed, keeping the running configuration: %s", err.c_str());
            break;
        }
        /* a target that fails to open is tried again at the next reload */
        std::string lt = log_target_of(next);
        if (lt != log_target) {
            if (log_open(lt.c_str(), next.log_level) < 0)
                log_error("reload: log_file %s: %s (keeping the old one)", lt.c_str(), strerror(errno));
            else
                log_target = lt;
        }
        if (next.access_log != cf.access_log && access_log_open(next.access_log.c_str()) < 0) {
            log_error("reload: access_log %s: %s (keeping the old one)", next.access_log.c_str(),
                      strerror(errno));
            next.access_log = cf.access_log;
        }
        log_set_level(next.log_level);
        pid_file_move(next.pid_file);
        cf = next;
        log_info("reloaded %s", cf.path.c_str());
        break;
    }
    case SIGUSR1:
        if (log_reopen() < 0)
            log_error("reopen log file: %s", strerror(errno));
        else
            log_info("log file reopened");
        break;
    }
}

/* Is pid a running wmproxyd? Only Linux's /proc can tell; elsewhere no. */
static bool is_wmproxyd(pid_t pid)
{
    char path[64], comm[32] = "";
    snprintf(path, sizeof path, "/proc/%ld/comm", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool yes = fgets(comm, sizeof comm, f) && !strcmp(comm, "wmproxyd\n");
    fclose(f);
    return yes;
}

/* -s: signal the daemon whose pid is in the configuration's pid_file. */
static int send_signal(const char *what)
{
    int signo;
    if (!strcmp(what, "reload"))
        signo = SIGHUP;
    else if (!strcmp(what, "stop"))
        signo = SIGTERM;
    else if (!strcmp(what, "quit"))
        signo = SIGQUIT;
    else {
        fprintf(stderr, "wmproxyd: -s takes reload, stop or quit, not '%s'\n", what);
        usage(stderr);
        return 1;
    }
    if (cf.pid_file.empty()) {
        fprintf(stderr, "wmproxyd: %s sets no pid_file: cannot find the daemon\n", cf.path.c_str());
        return 1;
    }
    FILE *f = fopen(cf.pid_file.c_str(), "r");
    long pid = 0;
    if (!f || fscanf(f, "%ld", &pid) != 1 || pid <= 0) {
        fprintf(stderr, "wmproxyd: no daemon running (pid_file %s: %s)\n", cf.pid_file.c_str(),
                f ? "no pid in it" : strerror(errno));
        if (f)
            fclose(f);
        return 1;
    }
    /* the daemon holds a lock on its pid file: a file nobody locks was
     * left by a crash, and its pid may be another process's by now (a
     * wmproxyd from before the lock, still running after an upgrade, is
     * known by its name where /proc tells it) */
    if (flock(fileno(f), LOCK_SH | LOCK_NB) == 0 && !is_wmproxyd((pid_t)pid)) {
        fprintf(stderr, "wmproxyd: no daemon running (pid_file %s is stale: no process holds it)\n",
                cf.pid_file.c_str());
        fclose(f);
        return 1;
    }
    fclose(f);
    if (kill((pid_t)pid, signo) < 0) {
        fprintf(stderr, "wmproxyd: no daemon running (pid %ld from %s: %s)\n", pid, cf.pid_file.c_str(),
                strerror(errno));
        return 1;
    }
    return 0;
}

/*
 * -t: load the certificates, keys and CA bundles as start-up would, so that
 * a missing or broken file is a configuration error naming its line.
 * TLS errors begin "cert PATH: ", "key PATH: ", "client_ca PATH: " or
 * "ca PATH: "; the line is that of the key holding PATH.
 */
static int test_tls(const conf &c, std::string *msg)
{
    std::string err;
    std::vector<tls_ctx *> made;
    /* keys are named by the order they came in; a map_cert pair by its
     * index (the same file may serve several pairs) */
    const char *key = nullptr;
    size_t nth = 0;
    if (c.role_ == ROLE_SERVER) {
        if (c.tc) {
            tls_server_opts o;
            if (!c.cert.empty())
                o.certs.push_back({c.cert, c.key});
            o.client_ca = c.client_ca;
            made.push_back(tls_server_ctx_new(o, &err));
        }
        for (size_t i = 0; err.empty() && i < c.map_certs.size(); i++) {
            tls_server_opts m;
            m.certs.push_back(c.map_certs[i]);
            made.push_back(tls_server_ctx_new(m, &err));
            nth = i;
            if (!err.empty())
                key = err.compare(0, 4, "key ") == 0 ? "map_key" : "map_cert";
        }
        if (err.empty() && c.map_certs.size() > 1) {
            tls_server_opts m;
            m.certs = c.map_certs;
            made.push_back(tls_server_ctx_new(m, &err));
        }
    } else if (c.ts) {
        made.push_back(client_tls(c, &err));
    }
    for (tls_ctx *x : made)
        if (x)
            tls_ctx_free(x);
    if (err.empty())
        return 0;
    if (!key) {
        /* "cert PATH: ...", "key PATH: ...", "client_ca PATH: ...", "ca PATH: ..." */
        static const char *const words[] = {"cert", "key", "client_ca", "ca"};
        for (const char *w : words)
            if (err.compare(0, strlen(w) + 1, std::string(w) + " ") == 0)
                key = w;
    }
    int line = 0;
    for (auto &k : c.key_lines)
        if (key && k.first == key && nth-- == 0) {
            line = k.second;
            break;
        }
    *msg = c.path + (line ? ":" + std::to_string(line) : std::string()) + ": " + err;
    return -1;
}

/* Secrets readable by any local user deserve a word at start-up. */
static void warn_exposed(const char *path, const char *what)
{
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & S_IROTH))
        log_warn("%s %s is readable by every local user: chmod o-r it", what, path);
}

static void warn_secrets(void)
{
    if (!cf.token.empty() || !cf.password.empty())
        warn_exposed(cf.path.c_str(), "the configuration file holding a secret");
    else
        for (const mapping_conf &m : cf.mappings)
            if (!m.password.empty()) {
                warn_exposed(cf.path.c_str(), "the configuration file holding a secret");
                break;
            }
    if (!cf.key.empty())
        warn_exposed(cf.key.c_str(), "private key");
    for (auto &p : cf.map_certs)
        warn_exposed(p.second.c_str(), "private key");
}

/* Each stream's first window is at least the protocol's 4 KiB, and they
 * take at most half of tunnel_buffer only while max_streams x 8 KiB fits
 * in it (mux.cpp, initial_window). */
static void warn_tunnel_buffer(void)
{
    if (cf.tunnel_buffer < 8192ull * cf.max_streams)
        log_warn("tunnel_buffer %llu KiB is under 8 KiB x max_streams (%u): past %llu streams, each may "
                 "hold 4 KiB beyond it (raise tunnel_buffer or lower max_streams)",
                 (unsigned long long)(cf.tunnel_buffer >> 10), cf.max_streams,
                 (unsigned long long)(cf.tunnel_buffer / 4096));
}

int main(int argc, char **argv)
{
    const char *path = DEFAULT_CONF, *sig = nullptr;
    bool test = false, detach = false;
    int c;

    while ((c = getopt(argc, argv, "f:tds:vh")) != -1) {
        switch (c) {
        case 'f': path = optarg; break;
        case 't': test = true; break;
        case 'd': detach = true; break;
        case 's': sig = optarg; break;
        case 'v':
            printf("wmproxyd %s\n%s\n", WMPROXY_VERSION, OpenSSL_version(OPENSSL_VERSION));
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "wmproxyd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 1;
    }

    std::string err;
    if (conf_load(path, &cf, &err) < 0) {
        fprintf(stderr, "%s\n", err.c_str());
        return 1;
    }
    if (test) {
        if (test_tls(cf, &err) < 0) {
            fprintf(stderr, "%s\n", err.c_str());
            return 1;
        }
        fprintf(stderr, "%s: configuration is valid\n", path);
        return 0;
    }
    if (sig)
        return send_signal(sig);

    signal(SIGPIPE, SIG_IGN);
#ifdef M_MMAP_THRESHOLD
    /* stream buffers come and go with lagging readers: give the large
     * ones back to the system when freed (a fixed threshold also stops
     * glibc from raising it and keeping them in the heap) */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_TRIM_THRESHOLD, 256 * 1024);
#endif
    /* -d: the parent waits on a pipe until the child has bound every
     * listener, so its exit status tells whether start-up worked */
    int ready[2] = {-1, -1};
    if (detach) {
        if (pipe(ready) < 0) {
            fprintf(stderr, "wmproxyd: pipe: %s\n", strerror(errno));
            return 2;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "wmproxyd: fork: %s\n", strerror(errno));
            return 2;
        }
        if (pid > 0) {
            char status = 2;
            close(ready[1]);
            if (read(ready[0], &status, 1) != 1)
                status = 2;
            return status;
        }
        close(ready[0]);
        detached = true;
        setsid();
        /* a daemon holds no directory: a HUP must still find its file */
        char *abs = realpath(cf.path.c_str(), nullptr);
        if (abs) {
            cf.path = abs;
            free(abs);
        }
        if (chdir("/") < 0) {
            fprintf(stderr, "wmproxyd: chdir /: %s\n", strerror(errno));
            return 2;
        }
    }

    log_target = log_target_of(cf);
    if (log_open(log_target.c_str(), cf.log_level) < 0) {
        fprintf(stderr, "wmproxyd: log_file %s: %s\n", log_target.c_str(), strerror(errno));
        return 2;
    }
    if (!cf.access_log.empty() && access_log_open(cf.access_log.c_str()) < 0) {
        fprintf(stderr, "wmproxyd: access_log %s: %s\n", cf.access_log.c_str(), strerror(errno));
        return 2;
    }
    if (reactor_init() < 0) {
        fprintf(stderr, "wmproxyd: event loop: %s\n", strerror(errno));
        return 2;
    }
    static const int sigs[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1};
    reactor_signals(sigs, 5, on_signal, nullptr);

    log_info("wmproxyd %s starting as %s with %s", WMPROXY_VERSION, cf.role_ == ROLE_SERVER ? "server" : "client",
             cf.path.c_str());
    warn_secrets();
    warn_tunnel_buffer();
    int r = cf.role_ == ROLE_SERVER ? server_start(cf, &err) : client_start(cf, &err);
    if (r < 0) {
        log_error("start-up failed: %s", err.c_str());
        if (!log_target.empty())   /* else that line went to stderr already */
            fprintf(stderr, "wmproxyd: %s\n", err.c_str());
        return 2;
    }
    if (!cf.pid_file.empty() && (pid_fd = pid_file_write(cf.pid_file)) < 0) {
        log_error("pid_file %s: %s", cf.pid_file.c_str(), strerror(errno));
        if (!log_target.empty())
            fprintf(stderr, "wmproxyd: pid_file %s: %s\n", cf.pid_file.c_str(), strerror(errno));
        return 2;
    }
    pid_path = cf.pid_file;
    if (detach) {
        char ok = 0;
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            /* let go of the caller's terminal or pipe: logs go to
             * log_file or syslog from here on */
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
            close(devnull);
        }
        if (write(ready[1], &ok, 1) != 1)
            log_warn("could not tell the parent that start-up succeeded");
        close(ready[1]);
    }
    reactor_run();
    pid_file_remove(pid_fd, pid_path);
    log_info("stopped");
    return 0;
}
