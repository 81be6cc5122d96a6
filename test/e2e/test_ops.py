"""Operating the daemon: -d, pid_file and -s, the signals (HUP reload, QUIT
drain, USR1 log reopen), the status_addr endpoint, and what `make install`
ships: the init script, the systemd unit, the man pages."""
import ctypes
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

from lib import (ROOT, WMPROXYD, Daemon, Skip, TcpServer, client_ini, closed_at_once, connect, echo_handler, echo_once,
                 free_port, http_page_handler, pattern_bytes, recv_all, refused, run, server_ini, start_pair,
                 tcp_mapping, test, wait_closed, wait_until)

MiB = 1 << 20


# ---- detached daemons: they are not our children, so they are found by
# their pid file, stopped by PID, and reaped as the subreaper ----

def become_subreaper():
    """Orphans of our descendants (a -d daemon once its parent exited) become
    our children, so their exit status can be collected. Returns whether the
    kernel agreed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0     # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def proc_state(pid):
    """The state letter of pid ('R', 'S', 'Z', ...), None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid):
    return proc_state(pid) not in (None, "Z", "X")


def reap(pid, timeout=10):
    """Wait for pid to exit. Returns its exit status when it was our child
    (negative: killed by that signal), else None; fails on timeout."""
    end = time.monotonic() + timeout
    while True:
        try:
            p, st = os.waitpid(pid, os.WNOHANG)
            if p == pid:
                return os.waitstatus_to_exitcode(st)
        except ChildProcessError:
            if not alive(pid):
                return None
        if time.monotonic() > end:
            raise AssertionError("pid %d still running after %ss" % (pid, timeout))
        time.sleep(0.02)


def read_pid(path):
    with open(path) as f:
        return int(f.read().strip())


def kill_pid_file(path):
    """Cleanup: SIGKILL the daemon named by the pid file, if any."""
    try:
        pid = read_pid(path)
    except (OSError, ValueError):
        return
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        reap(pid, 5)


def sanitizer_env(ctx):
    """The environment for a daemon that detaches: its stderr ends in
    /dev/null, so sanitizer reports go to files (see no_sanitizer_reports)."""
    env = dict(os.environ)
    base = ctx.path("sanitizer")
    env["ASAN_OPTIONS"] = "detect_leaks=1:log_path=" + base
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:log_path=" + base
    return env


def no_sanitizer_reports(ctx):
    found = sorted(glob.glob(ctx.path("sanitizer.*")))
    texts = []
    for p in found:
        with open(p, "rb") as f:
            texts.append("%s:\n%s" % (os.path.basename(p), f.read()[:3000].decode("utf-8", "replace")))
    assert not texts, "sanitizer report from a detached daemon:\n" + "\n".join(texts)


def wmproxyd(ctx, *args, timeout=20):
    return run([WMPROXYD] + list(args), timeout=timeout, env=sanitizer_env(ctx))


def file_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def wait_file(path, pattern, timeout=10, count=1):
    rx = re.compile(pattern)
    try:
        wait_until(lambda: len(rx.findall(file_text(path))) >= count, timeout,
                   "%s to hold /%s/" % (os.path.basename(path), pattern))
    except AssertionError as e:
        raise AssertionError("%s\n--- %s ---\n%s" % (e, path, file_text(path)[-3000:]))


def connect_once(port):
    """One connect, no retry: it must succeed right now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError as e:
        raise AssertionError("connect to 127.0.0.1:%d right after start-up: %s" % (port, e))


# ---- -d, pid_file, -s ----

@test(timeout=90)
def detach_returns_when_listening(ctx):
    """-d returns 0 only once every listener is bound: the very first connect
    succeeds. The pid file names the daemon (in a session of its own); -s
    reload and -s stop reach it through the file; it exits 0 and removes
    the file; -s then exits 1 since no daemon runs."""
    subreaper = become_subreaper()
    tport, pub = free_port(), free_port()
    pidf = ctx.path("wmproxyd.pid")
    logf = ctx.path("daemon.log")
    conf = ctx.write("server.ini", server_ini(tport, "map_tcp_bind = 127.0.0.1:%d\npid_file = %s\nlog_file = %s\n" %
                                              (pub, pidf, logf), tls=False))
    ctx.closers.append(lambda: kill_pid_file(pidf))
    for round_ in ("stop", "quit"):
        r = wmproxyd(ctx, "-f", conf, "-d")
        assert r.returncode == 0, (r.returncode, r.stderr)
        connect_once(tport)
        connect_once(pub)
        assert r.stderr == b"", r.stderr
        pid = read_pid(pidf)
        assert alive(pid), "pid_file names %d, which is not running" % pid
        with open("/proc/%d/comm" % pid) as f:
            assert f.read().strip() == "wmproxyd"
        assert os.getsid(pid) == pid, "the daemon is not in a session of its own"

        r = wmproxyd(ctx, "-f", conf, "-s", "reload")
        assert r.returncode == 0, r.stderr
        wait_file(logf, r"reload", count=1 if round_ == "stop" else 2)   # HUP arrived (reload itself: below)
        assert alive(pid)

        r = wmproxyd(ctx, "-f", conf, "-s", round_)
        assert r.returncode == 0, r.stderr
        rc = reap(pid, 15)
        if subreaper:
            assert rc == 0, "daemon exited %s after -s %s" % (rc, round_)
        wait_until(lambda: not os.path.exists(pidf), 5, "the pid file to be removed")
        assert refused(tport) and refused(pub)
        wait_file(logf, r"INFO stopped", count=1 if round_ == "stop" else 2)

    for what in ("stop", "reload", "quit"):
        r = wmproxyd(ctx, "-f", conf, "-s", what)
        assert r.returncode == 1, (what, r.returncode, r.stderr)
        assert b"no daemon running" in r.stderr, r.stderr
    r = wmproxyd(ctx, "-f", conf, "-s", "restart")
    assert r.returncode == 1 and b"usage" in r.stderr, r
    no_sanitizer_reports(ctx)


@test(timeout=60)
def detach_startup_failure(ctx):
    """A port taken: -d exits 2 at once with the reason on stderr, with or
    without log_file, leaving no pid file; a bad file exits 1 with
    FILE:LINE."""
    become_subreaper()
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(1)
    ctx.closers.append(hold.close)
    taken = hold.getsockname()[1]
    pidf = ctx.path("wmproxyd.pid")
    ctx.closers.append(lambda: kill_pid_file(pidf))
    for extra in ("log_file = %s\n" % ctx.path("daemon.log"), ""):
        for bind in ("", "map_tcp_bind = 127.0.0.1:%d\n" % taken):
            port = free_port() if bind else taken
            conf = ctx.write("server.ini", server_ini(port, bind + extra + "pid_file = %s\n" % pidf, tls=False))
            t0 = time.monotonic()
            try:
                r = wmproxyd(ctx, "-f", conf, "-d", timeout=15)
            except subprocess.TimeoutExpired:
                raise AssertionError("-d did not return though port %d is taken (%r)" % (taken, extra))
            assert r.returncode == 2, (extra, bind, r.returncode, r.stderr)
            assert ("bind 127.0.0.1:%d: Address already in use" % taken).encode() in r.stderr, r.stderr
            assert time.monotonic() - t0 < 10
            assert not os.path.exists(pidf), "pid file left by a failed start-up"
    conf = ctx.write("bad.ini", server_ini(free_port(), "pid_file = %s\nwindow = lots\n" % pidf, tls=False))
    r = wmproxyd(ctx, "-f", conf, "-d")
    assert r.returncode == 1, r
    assert re.match(re.escape(conf) + r":4: bad size 'lots'", r.stderr.decode()), r.stderr
    no_sanitizer_reports(ctx)


@test(timeout=60)
def pid_file_belongs_to_its_daemon(ctx):
    """Two daemons on one pid_file, as in a graceful restart: the second
    one's file stands, and the first one's exit leaves it (it used to remove
    it, losing the running daemon to -s). A file nobody holds is stale: -s
    says no daemon runs and signals nobody, even if its pid is alive. A
    reload naming another pid_file moves it there."""
    pidf, pidf2 = ctx.path("run.pid"), ctx.path("run2.pid")
    a = Daemon(ctx, "a", server_ini(free_port(), "pid_file = %s\n" % pidf, tls=False)).start()
    a.wait_log(r"listening|tunnel listener|INFO .*127\.0\.0\.1")
    wait_until(lambda: os.path.exists(pidf) and read_pid(pidf) == a.pid, 10, "a's pid file")
    text_b = server_ini(free_port(), "pid_file = %s\n" % pidf, tls=False)
    b = Daemon(ctx, "b", text_b).start()
    wait_until(lambda: read_pid(pidf) == b.pid, 10, "b's pid in the pid file")
    assert a.stop() == 0
    assert os.path.exists(pidf), "the first daemon removed the file of the second"
    assert read_pid(pidf) == b.pid
    r = wmproxyd(ctx, "-f", b.conf, "-s", "reload")
    assert r.returncode == 0, r.stderr
    b.wait_log(r"INFO reloaded")

    # a stale file whose pid is some other live process
    sleeper = subprocess.Popen(["sleep", "30"])
    ctx.procs.append(sleeper)
    stale = ctx.path("stale.pid")
    with open(stale, "w") as f:
        f.write("%d\n" % sleeper.pid)
    conf = ctx.write("stale.ini", server_ini(free_port(), "pid_file = %s\n" % stale, tls=False))
    r = wmproxyd(ctx, "-f", conf, "-s", "stop")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert b"no daemon running" in r.stderr and b"stale" in r.stderr, r.stderr
    assert sleeper.poll() is None, "-s signalled a process that is not the daemon"
    sleeper.kill()

    # reload to another pid_file
    with open(b.conf, "w") as f:
        f.write(text_b.replace(pidf, pidf2))
    b.signal(signal.SIGHUP)
    b.wait_log(r"INFO reloaded", count=2)
    wait_until(lambda: os.path.exists(pidf2) and not os.path.exists(pidf), 10, "the pid file to move")
    assert read_pid(pidf2) == b.pid
    r = wmproxyd(ctx, "-f", b.conf, "-s", "stop")
    assert r.returncode == 0, r.stderr
    assert b.proc.wait(10) == 0
    assert not os.path.exists(pidf2), "pid file left after the stop"


@test(timeout=60)
def reload_retries_a_log_file_that_failed(ctx):
    """A reload whose log_file cannot be opened keeps the old one and says
    so; the next reload tries it again (it used to take the failed path for
    open and never retry)."""
    d = ctx.path("later")
    text = server_ini(free_port(), "log_file = %s\n" % ctx.path("first.log"), tls=False)
    s = Daemon(ctx, "s", text).start()
    wait_file(ctx.path("first.log"), r"INFO wmproxyd .* starting")
    with open(s.conf, "w") as f:
        f.write(text.replace(ctx.path("first.log"), os.path.join(d, "second.log")))
    s.signal(signal.SIGHUP)
    wait_file(ctx.path("first.log"), r"ERROR reload: log_file .*second\.log: No such file or directory \(keeping the old one\)")
    os.mkdir(d)
    s.signal(signal.SIGHUP)
    wait_file(os.path.join(d, "second.log"), r"INFO reloaded")
    assert s.stop() == 0


@test(timeout=30)
def startup_failure_said_once(ctx):
    """In the foreground without log_file, the reason start-up failed is on
    stderr once (it was printed twice: the log line, then again)."""
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(1)
    ctx.closers.append(hold.close)
    conf = ctx.write("s.ini", server_ini(hold.getsockname()[1], tls=False))
    r = wmproxyd(ctx, "-f", conf)
    assert r.returncode == 2, r
    assert r.stderr.count(b"Address already in use") == 1, r.stderr


@test(timeout=30)
def detach_lets_go_of_the_terminal(ctx):
    """-d without log_file logs to syslog: the daemon keeps none of the
    caller's stdout and stderr open, so `out=$(wmproxyd -d)`, an ssh
    session or an init system's pipe are not held until the daemon exits."""
    become_subreaper()
    tport = free_port()
    pidf = ctx.path("wmproxyd.pid")
    conf = ctx.write("server.ini", server_ini(tport, "pid_file = %s\n" % pidf, tls=False))
    ctx.closers.append(lambda: kill_pid_file(pidf))
    p = subprocess.Popen([WMPROXYD, "-f", conf, "-d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=sanitizer_env(ctx))
    ctx.procs.append(p)
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        parent = p.poll()
        p.kill()
        held = [fd for fd in ("1", "2") if os.path.exists(pidf) and _fd_is_pipe(read_pid(pidf), fd)]
        raise AssertionError("-d exited %s, but after 10s the daemon still holds the caller's %s" % (
            parent, " and ".join({"1": "stdout", "2": "stderr"}[fd] for fd in held) or "pipes"))
    assert p.returncode == 0, (p.returncode, err)
    connect_once(tport)
    pid = read_pid(pidf)
    for fd in ("0", "1", "2"):
        assert not _fd_is_pipe(pid, fd), "daemon fd %s is still the caller's pipe" % fd
    assert wmproxyd(ctx, "-f", conf, "-s", "stop").returncode == 0
    reap(pid, 15)
    no_sanitizer_reports(ctx)


@test(timeout=30)
def detach_leaves_the_directory(ctx):
    """-d with a relative -f: the daemon moves to / (it pins no directory,
    as daemons do), and a HUP still finds the file it was started with."""
    become_subreaper()
    tport = free_port()
    pidf = ctx.path("wmproxyd.pid")
    logf = ctx.path("daemon.log")
    text = server_ini(tport, "pid_file = %s\nlog_file = %s\n" % (pidf, logf), tls=False)
    ctx.write("server.ini", text)
    ctx.closers.append(lambda: kill_pid_file(pidf))
    r = run([WMPROXYD, "-f", "server.ini", "-d"], cwd=ctx.tmp, env=sanitizer_env(ctx))
    assert r.returncode == 0, r.stderr
    pid = read_pid(pidf)
    ctx.write("server.ini", text + "log_level = debug\n")
    assert run([WMPROXYD, "-f", "server.ini", "-s", "reload"], cwd=ctx.tmp).returncode == 0
    wait_file(logf, r"INFO reloaded |reload failed")
    assert "INFO reloaded " in file_text(logf), file_text(logf)[-2000:]
    cwd = os.readlink("/proc/%d/cwd" % pid)
    assert cwd == "/", "the detached daemon's working directory is %s, want /" % cwd
    assert run([WMPROXYD, "-f", "server.ini", "-s", "stop"], cwd=ctx.tmp).returncode == 0
    reap(pid, 15)
    no_sanitizer_reports(ctx)


def _fd_is_pipe(pid, fd):
    try:
        return os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("pipe:")
    except OSError:
        return False


# ---- HUP: reload ----

def hash_sink(c):
    """Hash everything until EOF, answer the hex SHA-256, close."""
    h = hashlib.sha256()
    buf = bytearray(MiB)
    while True:
        n = c.recv_into(buf)
        if not n:
            break
        h.update(memoryview(buf)[:n])
    c.sendall(h.hexdigest().encode())


@test(timeout=120)
def reload_client_adds_mapping_mid_transfer(ctx):
    """HUP on the client with one more [mapping]: the new one serves, the old
    ones still do, and a 64 MiB upload started before the reload arrives
    intact; the tunnel is not dropped."""
    sink = TcpServer(ctx, hash_sink)
    echo = TcpServer(ctx, echo_handler)
    p_up, p_keep, p_new = free_port(), free_port(), free_port()
    maps = tcp_mapping("up", sink.port, p_up) + tcp_mapping("keep", echo.port, p_keep)
    s, c, _ = start_pair(ctx, maps, server_extra="allow_ports = %d,%d,%d\n" % (p_up, p_keep, p_new))
    assert refused(p_new)

    half = threading.Event()
    go_on = threading.Event()
    res = {}

    def upload():
        try:
            sock = connect(p_up, timeout=60)
            h = hashlib.sha256()
            for i in range(64):
                if i == 32:
                    half.set()
                    if not go_on.wait(60):
                        raise AssertionError("the reload never finished")
                d = pattern_bytes(i, MiB)
                h.update(d)
                sock.sendall(d)
            sock.shutdown(socket.SHUT_WR)
            res["want"] = h.hexdigest()
            res["got"] = recv_all(sock).decode()
            sock.close()
        except Exception as e:   # noqa: BLE001 - reported below
            res["err"] = "%s: %s" % (type(e).__name__, e)
            half.set()
    t = threading.Thread(target=upload, daemon=True)
    t.start()
    assert half.wait(60), "upload did not get going"
    assert "err" not in res, res

    ctx.write("client.ini", c.ini + "\n" + tcp_mapping("new", echo.port, p_new))
    c.signal(signal.SIGHUP)
    try:
        c.wait_log(r"INFO reloaded ", timeout=10)
        c.wait_log(r"mapping registered name=new", timeout=10)
        assert echo_once(p_new, b"new mapping") == b"new mapping"
        assert echo_once(p_keep, b"old mapping") == b"old mapping"
    finally:
        go_on.set()
    t.join(90)
    assert not t.is_alive(), "upload hung"
    assert "err" not in res, res["err"]
    assert res["got"] == res["want"], "64 MiB upload across the reload: service hashed %r, sent %r" % (
        res["got"], res["want"])
    assert c.text().count("tunnel up") == 1 and "tunnel down" not in c.text(), c.text()[-3000:]
    assert "tunnel down" not in s.text()
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def reload_server_log_level(ctx):
    """-s reload on the server after log_level = debug: debug lines appear
    (an HTTP request through an http mapping makes one), the tunnel stays
    up."""
    echo = TcpServer(ctx, echo_handler)
    web = TcpServer(ctx, http_page_handler(b"page\n"))
    rp, hp = free_port(), free_port()
    pidf = ctx.path("server.pid")
    maps = tcp_mapping("echo", echo.port, rp) + \
        "[mapping web]\nmode = http\nlocal_addr = 127.0.0.1:%d\ndomain = web.example\n" % web.port
    s, c, _ = start_pair(ctx, maps, server_extra="allow_ports = %d\nmap_http_bind = 127.0.0.1:%d\npid_file = %s\n" %
                         (rp, hp, pidf))

    def get():
        sock = connect(hp)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: web.example\r\nConnection: close\r\n\r\n")
        r = recv_all(sock)
        sock.close()
        assert r.startswith(b"HTTP/1.1 200 ") and r.endswith(b"page\n"), r
    get()
    assert echo_once(rp, b"before") == b"before"
    assert " DEBUG " not in s.text()
    ctx.write("server.ini", s.ini + "log_level = debug\n")
    r = run([WMPROXYD, "-f", s.conf, "-s", "reload"])
    assert r.returncode == 0, r.stderr
    s.wait_log(r"INFO reloaded ")
    assert echo_once(rp, b"after") == b"after"
    get()
    s.wait_log(r" DEBUG ")
    assert "tunnel down" not in s.text() and c.text().count("tunnel up") == 1
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def reload_invalid_file_keeps_config(ctx):
    """A HUP with an invalid file: "reload failed" with FILE:LINE: message in
    the log, and the running configuration goes on serving (both roles).
    -s reload with that file refuses to signal: exit 1 with FILE:LINE."""
    echo = TcpServer(ctx, echo_handler)
    rp = free_port()
    pidf = ctx.path("server.pid")
    s, c, _ = start_pair(ctx, tcp_mapping("echo", echo.port, rp),
                         server_extra="allow_ports = %d\npid_file = %s\n" % (rp, pidf))
    for d, bad, msg in ((c, "bogus = 1\n", r"unknown key 'bogus'"), (s, "heartbeat = 5x\n", r"bad duration '5x'")):
        text = d.ini + bad
        ctx.write(d.name + ".ini", text)
        line = text.count("\n")
        d.signal(signal.SIGHUP)
        d.wait_log(r"reload failed.*%s:%d: %s" % (re.escape(d.conf), line, msg))
        assert "INFO reloaded" not in d.text()
        assert echo_once(rp, b"still " + d.name.encode()) == b"still " + d.name.encode()
    r = run([WMPROXYD, "-f", s.conf, "-s", "reload"])
    assert r.returncode == 1, r
    assert re.match(re.escape(s.conf) + r":\d+: bad duration", r.stderr.decode()), r.stderr
    assert "tunnel down" not in s.text() and c.text().count("tunnel up") == 1
    assert c.stop() == 0
    assert s.stop() == 0


# ---- QUIT: drain ----

@test(timeout=60)
def quit_drains_streams(ctx):
    """QUIT on the server while a slow 16 MiB download runs: the listeners
    close at once, the download completes intact, then the daemon exits 0
    (well before shutdown_timeout)."""
    size = 16 * MiB
    data = pattern_bytes(42, size)

    def slow(conn):
        for off in range(0, size, 256 * 1024):
            conn.sendall(data[off:off + 256 * 1024])
            time.sleep(0.05)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    svc = TcpServer(ctx, slow)
    pub = free_port()
    s, c, tport = start_pair(ctx, tcp_mapping("slow", svc.port),
                             server_extra="map_tcp_bind = 127.0.0.1:%d\nshutdown_timeout = 30s\n" % pub)
    sock = connect(pub, timeout=30)
    got = bytearray()
    while len(got) < MiB:
        d = sock.recv(MiB)
        assert d, "download closed early"
        got += d
    s.signal(signal.SIGQUIT)
    s.wait_log(r"stopping gracefully")
    wait_until(lambda: refused(pub) and refused(tport), 2, "the listeners to close after QUIT")
    assert s.proc.poll() is None, "exited before the stream drained"
    got += recv_all(sock)
    sock.close()
    t_done = time.monotonic()
    assert len(got) == size, "got %d of %d bytes" % (len(got), size)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "download corrupted across QUIT"
    rc = s.proc.wait(10)
    assert rc == 0, rc
    assert time.monotonic() - t_done < 5, "exit came %.1fs after the last stream ended" % (time.monotonic() - t_done)
    assert "drained" in s.text() and "shutdown_timeout reached" not in s.text()
    assert c.stop() == 0


def tx_queue(port):
    """Bytes in the kernel send queues of the TCP sockets on local port."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    n += int(fields[4].split(":")[0], 16)
    return n


@test(timeout=60)
def quit_waits_for_bytes_queued_in_the_tunnel(ctx):
    """QUIT on the server while the last bytes of a finished upload still
    wait in the tunnel (the client is stopped, so the tunnel socket is full
    and they sit in our own queue): the drain lasts until they leave, and
    the service gets every byte. Before, the drain ended when the stream
    did and those bytes were thrown away with no error anywhere."""
    got = []

    def sink(conn):
        conn.shutdown(socket.SHUT_WR)        # the service answers nothing
        n = 0
        while True:
            d = conn.recv(MiB)
            if not d:
                break
            n += len(d)
        got.append(n)
    svc = TcpServer(ctx, sink)
    rp, st = free_port(), free_port()
    s, c, tport = start_pair(ctx, tcp_mapping("up", svc.port, rp),
                             server_extra="allow_ports = %d\nstatus_addr = 127.0.0.1:%d\nshutdown_timeout = 20s\n"
                             % (rp, st),
                             client_extra="window = 16m\nmax_window = 16m\ntunnel_buffer = 64m\n")
    user = connect(rp)
    assert user.recv(10) == b""              # the service's FIN came through
    c.signal(signal.SIGSTOP)
    ctx.closers.append(lambda: c.proc.poll() is None and c.signal(signal.SIGCONT))
    # fill the tunnel socket's kernel queues (their size varies), then a
    # little more: that stays in the server's own queue
    sent, last, still = 0, -1, 0
    chunk = b"u" * 65536
    while still < 3:
        assert sent < 64 * MiB, "the tunnel's kernel queue never filled"
        user.sendall(chunk)
        sent += len(chunk)
        time.sleep(0.03)
        q = tx_queue(tport)
        still = still + 1 if q == last else 0
        last = q
    user.sendall(b"v" * 100000)
    sent += 100000
    user.shutdown(socket.SHUT_WR)
    wait_until(lambda: get_status(st)["streams"] == 0, 10, "the stream to finish on the server")
    s.signal(signal.SIGQUIT)
    s.wait_log(r"stopping gracefully")
    c.signal(signal.SIGCONT)
    wait_until(lambda: got, 15, "the service to see the end of the upload")
    assert got == [sent], "the service got %d of %d bytes" % (got[0], sent)
    assert s.proc.wait(10) == 0
    assert "drained, stopping" in s.text(), s.text()[-2000:]
    user.close()
    assert c.stop() == 0


@test(timeout=60)
def term_during_a_quit_drain_still_lingers(ctx):
    """TERM while a QUIT drain is under way (a stream still open) stops as
    a TERM does: the tunnel's connection is given its second for the peer
    to read the GOAWAY and close (here the peer is paused, so the whole
    second), not cut at once by the drain's check that follows."""
    svc = TcpServer(ctx, echo_handler)
    pub = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("echo", svc.port), server_extra="map_tcp_bind = 127.0.0.1:%d\n" % pub)
    held = connect(pub)
    held.sendall(b"a")
    assert held.recv(10) == b"a"
    s.signal(signal.SIGSTOP)
    ctx.closers.append(lambda: s.proc.poll() is None and s.signal(signal.SIGCONT))
    c.signal(signal.SIGQUIT)
    c.wait_log(r"stopping gracefully")
    t0 = time.monotonic()
    c.signal(signal.SIGTERM)
    assert c.proc.wait(10) == 0
    took = time.monotonic() - t0
    assert 0.8 <= took < 5, "stopped after %.2fs" % took
    s.signal(signal.SIGCONT)
    held.close()
    assert s.stop() == 0


@test(timeout=60)
def quit_refuses_new_streams_and_reloads(ctx):
    """While the server drains after QUIT: a HUP does not open the listeners
    again (it is logged and ignored), a stream a client opens for its
    bind_addr proxy user is refused, and so is a mapping a client registers,
    while the held stream carries on."""
    echo = TcpServer(ctx, echo_handler)
    pub, cb = free_port(), free_port()
    rp = free_port()
    s, c, tport = start_pair(ctx, tcp_mapping("echo", echo.port),
                             server_extra="map_tcp_bind = 127.0.0.1:%d\nflag = http\nshutdown_timeout = 20s\n"
                                          "allow_ports = %d\n" % (pub, rp),
                             client_extra="bind_addr = 127.0.0.1:%d\n" % cb)
    held = connect(pub)
    held.sendall(b"a")
    assert held.recv(10) == b"a"
    s.signal(signal.SIGQUIT)
    s.wait_log(r"stopping gracefully")
    wait_until(lambda: refused(pub) and refused(tport), 5, "the listeners to close after QUIT")
    s.signal(signal.SIGHUP)
    s.wait_log(r"reload ignored: stopping gracefully")
    assert refused(tport) and refused(pub), "a reload during the drain opened the listeners again"
    k = None
    try:    # the refusal may reset the connection before the request is sent, even before
        k = connect(cb)         # connect() has seen it complete
        k.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % echo.port)
        got = recv_all(k)       # closed, or reset: refused either way
    except (ConnectionResetError, BrokenPipeError):
        got = b""
    if k:
        k.close()
    assert not got.startswith(b"HTTP/1.1 200"), got
    s.wait_log(r"proxy stream from \S+ refused: stopping gracefully")
    # a mapping a client registers now gets no port
    with open(c.conf, "w") as f:
        f.write(client_ini(tport, "bind_addr = 127.0.0.1:%d\n" % cb, tcp_mapping("echo", echo.port) +
                           tcp_mapping("late", echo.port, rp)))
    c.signal(signal.SIGHUP)
    c.wait_log(r"mapping rejected name=late .*the server is stopping")
    assert refused(rp)
    held.sendall(b"b")
    assert held.recv(10) == b"b"
    held.close()
    assert s.proc.wait(10) == 0
    assert c.stop() == 0


@test(timeout=60)
def reload_client_changes_remote_port_mapping(ctx):
    """A reload that changes a mapping with remote_port (another
    local_addr): the server frees the port as it unregisters the old one,
    so the new one gets it in the same breath and the port serves the new
    local_addr."""
    e1 = TcpServer(ctx, lambda conn: conn.sendall(b"one"))
    e2 = TcpServer(ctx, lambda conn: conn.sendall(b"two"))
    rp = free_port()
    s, c, tport = start_pair(ctx, tcp_mapping("m", e1.port, rp), server_extra="allow_ports = %d\n" % rp)
    k = connect(rp)
    assert recv_all(k) == b"one"
    k.close()
    with open(c.conf, "w") as f:
        f.write(client_ini(tport, "", tcp_mapping("m", e2.port, rp)))
    c.signal(signal.SIGHUP)
    c.wait_log(r"mapping (registered|rejected) name=m", count=2, timeout=10)
    assert "rejected" not in c.text(), c.text()
    k = connect(rp)
    assert recv_all(k) == b"two"
    k.close()
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def server_reload_takes_ports_back_and_gives_them_back(ctx):
    """A server reload that drops a client's remote_port from allow_ports,
    and removes map_tcp_bind, closes both ports (before, the remote_port
    kept forwarding) and tells the client; a later reload that restores them
    brings both mappings back without a restart (before, the map_tcp_bind
    mapping was refused "no client serves it" until the client reconnected)."""
    e1 = TcpServer(ctx, echo_handler)
    e2 = TcpServer(ctx, echo_handler)
    rp, bp, other = free_port(), free_port(), free_port()
    hb = "heartbeat = 1s\n"
    full = hb + "allow_ports = %d\nmap_tcp_bind = 127.0.0.1:%d\n" % (rp, bp)
    s, c, tport = start_pair(ctx, tcp_mapping("own", e1.port, rp) + tcp_mapping("shared", e2.port),
                             server_extra=full, client_extra=hb)
    assert echo_once(rp, b"one") == b"one"
    assert echo_once(bp, b"two") == b"two"
    with open(s.conf, "w") as f:
        f.write(server_ini(tport, hb + "allow_ports = %d\n" % other))
    s.signal(signal.SIGHUP)
    s.wait_log(r"mapping revoked name=own .*reason=\"port %d is no longer in allow_ports\"" % rp, timeout=5)
    s.wait_log(r"mapping revoked name=shared .*reason=\"map_tcp_bind was removed by a reload\"", timeout=5)
    c.wait_log(r"mapping rejected name=own", timeout=5)
    c.wait_log(r"mapping rejected name=shared", timeout=5)
    assert refused(rp) and refused(bp)
    with open(s.conf, "w") as f:
        f.write(server_ini(tport, full))
    s.signal(signal.SIGHUP)

    def serves(port):
        try:
            return echo_once(port, b"back", timeout=2) == b"back"
        except OSError:
            return False
    wait_until(lambda: serves(rp), 8, "the remote_port mapping to serve again")
    wait_until(lambda: serves(bp), 8, "the map_tcp_bind mapping to serve again")
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def quit_stuck_stream_times_out(ctx):
    """QUIT with a stream that never ends: the daemon exits 0 after
    shutdown_timeout (2s), closing it."""
    echo = TcpServer(ctx, echo_handler)
    pub = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("echo", echo.port),
                         server_extra="map_tcp_bind = 127.0.0.1:%d\nshutdown_timeout = 2s\n" % pub)
    sock = connect(pub)
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    t0 = time.monotonic()
    s.signal(signal.SIGQUIT)
    wait_closed(sock, 6)
    sock.close()
    rc = s.proc.wait(6)
    dt = time.monotonic() - t0
    assert rc == 0, rc
    assert 1.5 <= dt <= 5, "exited %.1fs after QUIT, shutdown_timeout is 2s" % dt
    s.wait_log(r"shutdown_timeout reached with 1 stream")
    assert c.stop() == 0


# ---- USR1: reopen logs ----

@test(timeout=60)
def usr1_reopens_logs(ctx):
    """mv server.log server.log.1 (and the access log); USR1: new lines go to
    new files at the configured paths, none to the old ones."""
    echo = TcpServer(ctx, echo_handler)
    rp, tport = free_port(), free_port()
    # relative paths: beside the configuration file
    s = Daemon(ctx, "srv", server_ini(tport, "allow_ports = %d\nlog_file = server.log\naccess_log = access.log\n" %
                                      rp, tls=False)).start()
    log, acc = ctx.path("server.log"), ctx.path("access.log")
    wait_file(log, r"listening for tunnels")
    c = Daemon(ctx, "client", client_ini(tport, "", tcp_mapping("echo", echo.port, rp), tls=False)).start()
    c.wait_log(r"mapping registered name=echo")
    assert echo_once(rp, b"one") == b"one"
    wait_file(acc, r"127\.0\.0\.1:\d+ tcp echo - 3 3 ")
    os.rename(log, log + ".1")
    os.rename(acc, acc + ".1")
    s.signal(signal.SIGUSR1)
    wait_file(log, r"INFO log file reopened")
    assert echo_once(rp, b"second") == b"second"
    wait_file(acc, r"127\.0\.0\.1:\d+ tcp echo - 6 6 ")
    assert s.stop() == 0
    wait_file(log, r"INFO stopped")
    old, old_acc = file_text(log + ".1"), file_text(acc + ".1")
    assert "listening for tunnels" in old and "reopened" not in old and "stopped" not in old, old
    assert " 3 3 " in old_acc and " 6 6 " not in old_acc, old_acc
    assert c.stop() == 0


# ---- status_addr: /status and /metrics ----

def http_get(port, path, timeout=10):
    """(status, headers dict with lower-case names, body) of GET path."""
    sock = connect(port, timeout)
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % (path, port)).encode())
    raw = recv_all(sock)
    sock.close()
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no complete answer to GET %s: %r" % (path, raw[:200])
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return code, hdrs, body


def get_status(port):
    code, hdrs, body = http_get(port, "/status")
    assert code == 200, (code, body)
    assert hdrs.get("content-type", "").startswith("application/json"), hdrs
    return json.loads(body)


PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+]+|NaN|[+-]Inf)$")


def get_metrics(port):
    """{'name' or 'name{labels}': value} and {'name': type} from /metrics."""
    code, hdrs, body = http_get(port, "/metrics")
    assert code == 200, (code, body)
    assert hdrs.get("content-type", "").startswith("text/plain"), hdrs
    vals, types = {}, {}
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split()
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = PROM_LINE.match(line)
        assert m, "not Prometheus text format: %r" % line
        vals[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return vals, types


UP, DOWN, N_STREAMS = 10000, 300000, 3


def status_setup(ctx):
    """A server with status_addr, a client with a tcp and an http mapping,
    3 streams of UP bytes up and DOWN bytes down held open (they are
    returned, with the server, client, ports)."""
    def updown(conn):
        n = 0
        while True:
            d = conn.recv(65536)
            if not d:
                break
            n += len(d)
        conn.sendall(pattern_bytes(n, DOWN))
    svc = TcpServer(ctx, updown)
    web = TcpServer(ctx, echo_handler)
    st, rp, http_pub, idle = free_port(), free_port(), free_port(), free_port()
    maps = tcp_mapping("svc", svc.port, rp) + \
        "[mapping web]\nmode = http\nlocal_addr = 127.0.0.1:%d\ndomain = a.example.com, *.b.example\n" % web.port
    s, c, tport = start_pair(ctx, maps, tls=False, client_extra="token = right\n", server_extra=(
        "allow_ports = %d\nstatus_addr = 127.0.0.1:%d\nmap_http_bind = 127.0.0.1:%d\n"
        "map_tcp_bind = 127.0.0.1:%d\npid_file = %s\ntoken = right\n" % (rp, st, http_pub, idle,
                                                                          ctx.path("server.pid"))))
    s.wait_log(r"mapping registered name=web")
    socks = []
    for _ in range(N_STREAMS):
        sock = connect(rp)
        sock.sendall(pattern_bytes(len(socks), UP))
        socks.append(sock)
    return s, c, st, rp, idle, tport, socks


def finish_streams(socks):
    for sock in socks:
        sock.shutdown(socket.SHUT_WR)
    for sock in socks:
        assert len(recv_all(sock)) == DOWN
        sock.close()


@test(timeout=60)
def status_methods_and_half_close(ctx):
    """The status endpoint as an HTTP server: a request followed at once by
    the user's FIN is answered (it was dropped unless the FIN came in a
    later read); HEAD gets the head alone (it got the body too); another
    method gets 405 with Allow."""
    st = free_port()
    s = Daemon(ctx, "server", server_ini(free_port(), "status_addr = 127.0.0.1:%d\n" % st, tls=False)).start()
    s.wait_log(r"listening for tunnels")
    wait_until(lambda: not refused(st), 5, "the status listener")

    def ask(raw, fin):
        c = connect(st, 10)
        c.sendall(raw)
        if fin:
            c.shutdown(socket.SHUT_WR)
        r = recv_all(c)
        c.close()
        return r

    for i in range(20):
        r = ask(b"GET /metrics HTTP/1.0\r\n\r\n", True)
        assert r.startswith(b"HTTP/1.1 200 ") and b"wmproxy_" in r, (i, r[:200])
    r = ask(b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n", False)
    head, sep, body = r.partition(b"\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 200 ") and sep and body == b"", r
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) > 0, head
    r = ask(b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", False)
    assert r.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in r, r


@test(timeout=60)
def status_json(ctx):
    """GET /status: version, uptime, the client with its address, mappings,
    streams and bytes, and the totals, matching the traffic just made.
    bytes_in: payload received from clients through tunnels (the private
    services' answers); bytes_out: payload sent to them (the users' bytes)."""
    s, c, st, rp, _, _, socks = status_setup(ctx)
    version = run([WMPROXYD, "-v"]).stdout.decode().split()[1]
    peer = re.findall(r"tunnel up peer=(127\.0\.0\.1:\d+)", s.text())[-1]

    def streams_are(n):
        j = get_status(st)
        return j if j["streams"] == n and j["clients"] and j["clients"][0]["streams"] == n else None
    j = wait_until(lambda: streams_are(N_STREAMS), 5, "/status to count %d streams" % N_STREAMS)
    assert j["version"] == version, j
    assert isinstance(j["uptime_s"], (int, float)) and 0 <= j["uptime_s"] < 60, j
    assert len(j["clients"]) == 1, j
    cl = j["clients"][0]
    assert cl["address"] == peer, (cl, peer)
    maps = {m["name"]: m for m in cl["mappings"]}
    assert set(maps) == {"svc", "web"}, cl
    assert maps["svc"]["mode"] == "tcp" and maps["svc"]["port"] == rp, maps["svc"]
    assert maps["web"]["mode"] == "http" and maps["web"]["domains"] == ["a.example.com", "*.b.example"], maps["web"]

    finish_streams(socks)
    j = wait_until(lambda: streams_are(0), 5, "/status to count 0 streams")
    cl = j["clients"][0]
    for o in (j, cl):
        assert o["bytes_out"] >= N_STREAMS * UP, o
        assert o["bytes_in"] >= N_STREAMS * DOWN, o
        assert o["bytes_out"] < N_STREAMS * DOWN, ("directions swapped?", o)
    code, _, _ = http_get(st, "/nope")
    assert code == 404, code
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def status_metrics(ctx):
    """GET /metrics, Prometheus text format: tunnels, streams, bytes each
    way, accepted and refused connections, handshake failures, reloads,
    each at least what the test just produced."""
    s, c, st, rp, idle, tport, socks = status_setup(ctx)
    v, types = wait_until(lambda: (lambda m: m if m[0].get("wmproxy_streams") == N_STREAMS else None)(
        get_metrics(st)), 5, "wmproxy_streams to be %d" % N_STREAMS)
    want_types = {"wmproxy_tunnels": "gauge", "wmproxy_streams": "gauge", "wmproxy_bytes_total": "counter",
                  "wmproxy_connections_total": "counter", "wmproxy_handshake_failures_total": "counter",
                  "wmproxy_reloads_total": "counter"}
    for name, typ in want_types.items():
        assert types.get(name) == typ, "# TYPE %s %s missing (got %r)" % (name, typ, types.get(name))
    assert v["wmproxy_tunnels"] == 1, v
    assert v["wmproxy_reloads_total"] == 0, v
    finish_streams(socks)

    # a public connection nobody serves (map_tcp_bind with no mapping): refused
    closed_at_once(idle, 5)
    # a client with a wrong token: a handshake failure
    bad = Daemon(ctx, "badclient", client_ini(tport, "token = wrong\n", tls=False)).start()
    bad.wait_log(r"refused the tunnel", timeout=15)
    assert bad.stop() == 0
    r = run([WMPROXYD, "-f", s.conf, "-s", "reload"])
    assert r.returncode == 0, r.stderr
    s.wait_log(r"INFO reloaded ")

    def settled():
        m, _ = get_metrics(st)
        return m if m.get("wmproxy_streams") == 0 and m.get("wmproxy_reloads_total") == 1 else None
    v = wait_until(settled, 5, "wmproxy_streams 0 and wmproxy_reloads_total 1")
    assert v["wmproxy_tunnels"] == 1, v
    assert v['wmproxy_bytes_total{direction="in"}'] >= N_STREAMS * DOWN, v
    assert v['wmproxy_bytes_total{direction="out"}'] >= N_STREAMS * UP, v
    assert v['wmproxy_bytes_total{direction="out"}'] < N_STREAMS * DOWN, ("directions swapped?", v)
    assert v['wmproxy_connections_total{result="accepted"}'] >= N_STREAMS, v
    assert v['wmproxy_connections_total{result="refused"}'] >= 1, v
    assert v["wmproxy_handshake_failures_total"] >= 1, v
    assert v["wmproxy_reloads_total"] == 1, v
    assert c.stop() == 0
    assert s.stop() == 0


# ---- make install: init script, systemd unit, man pages ----

def make_install(ctx, dest, target="install"):
    if not os.access(os.path.join(ROOT, "wmproxyd"), os.X_OK):
        raise Skip("./wmproxyd is not built (make wmproxyd)")
    # -o wmproxyd: install the binary the suite runs, never rebuild it here;
    # and none of the flags of a make that may be running this suite
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    r = run(["make", "-s", "-C", ROOT, "-o", "wmproxyd", target, "DESTDIR=" + dest, "PREFIX=/usr"], timeout=120,
            env=env)
    assert r.returncode == 0, "make %s: %s" % (target, (r.stdout + r.stderr).decode())


def mode(path):
    return os.stat(path).st_mode & 0o7777


@test(timeout=120)
def install_layout(ctx):
    """make install DESTDIR= PREFIX=/usr: binary, man pages, init script
    (0755, LSB header, paths of this install), systemd unit (verified when
    systemd-analyze is here), example configurations that a second install
    does not overwrite; make uninstall leaves only the configurations."""
    dest = ctx.path("root")
    make_install(ctx, dest)
    examples = sorted("etc/wmproxy/" + os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "conf", "*.ini")))
    assert "etc/wmproxy/server.ini" in examples and "etc/wmproxy/client.ini" in examples, examples
    files = {"usr/sbin/wmproxyd": 0o755, "usr/share/man/man8/wmproxyd.8": 0o644,
             "usr/share/man/man5/wmproxy.ini.5": 0o644, "etc/init.d/wmproxyd": 0o755,
             "usr/lib/systemd/system/wmproxyd.service": 0o644}
    files.update((e, 0o640) for e in examples)
    for f, m in files.items():
        p = os.path.join(dest, f)
        assert os.path.isfile(p), "not installed: " + f
        assert mode(p) == m, "%s: mode %o, want %o" % (f, mode(p), m)
    init = file_text(os.path.join(dest, "etc/init.d/wmproxyd"))
    assert init.startswith("#!/bin/sh\n"), init[:40]
    hdr = re.search(r"### BEGIN INIT INFO\n(.*?)### END INIT INFO", init, re.S)
    assert hdr, "no LSB header"
    for k in ("Provides", "Required-Start", "Required-Stop", "Default-Start", "Default-Stop", "Short-Description"):
        assert re.search(r"^# %s:\s+\S" % k, hdr.group(1), re.M), "LSB header lacks " + k
    assert "DAEMON=/usr/sbin/wmproxyd\n" in init and "CONF=/etc/wmproxy/wmproxy.ini\n" in init
    unit_path = os.path.join(dest, "usr/lib/systemd/system/wmproxyd.service")
    unit = file_text(unit_path)
    assert re.search(r"^ExecStart=/usr/sbin/wmproxyd -f /etc/wmproxy/wmproxy.ini$", unit, re.M), unit
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit, re.M), unit
    assert re.search(r"^Type=simple$", unit, re.M) and not re.search(r"^ExecStart=.* -d\b", unit, re.M), unit
    assert run(["sh", "-n", os.path.join(dest, "etc/init.d/wmproxyd")]).returncode == 0

    sda = shutil.which("systemd-analyze")
    if sda:
        # ExecStart must name a binary that exists: point it into DESTDIR
        copy = ctx.write("wmproxyd.service",
                         unit.replace("/usr/sbin/wmproxyd", os.path.join(dest, "usr/sbin/wmproxyd")))
        r = run([sda, "verify", "--man=no", copy])
        noise = [l for l in (r.stdout + r.stderr).decode().splitlines() if "wmproxyd.service" in l]
        assert r.returncode == 0 and not noise, (r.returncode, (r.stdout + r.stderr).decode())
    else:
        print("    (systemd-analyze absent: unit not verified)")

    edited = os.path.join(dest, "etc/wmproxy/server.ini")
    with open(edited, "a") as f:
        f.write("; edited by the operator\n")
    make_install(ctx, dest)
    assert file_text(edited).endswith("; edited by the operator\n"), "make install overwrote an edited config"
    make_install(ctx, dest, "uninstall")
    left = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
    assert left == examples, left


@test(timeout=60)
def man_pages_render(ctx):
    """groff -ww -z -man: both pages render without a warning."""
    groff = shutil.which("groff")
    if not groff:
        raise Skip("groff is not installed (Debian: groff-base)")
    for page in ("man/wmproxyd.8", "man/wmproxy.ini.5"):
        r = run([groff, "-ww", "-z", "-man", os.path.join(ROOT, page)])
        assert r.returncode == 0 and r.stderr == b"" and r.stdout == b"", (page, r.stderr.decode())


def init_shells(ctx):
    """(label, argv prefix, PATH) for each way to run the init script here:
    /bin/sh with the system's start-stop-daemon, and BusyBox ash with only
    BusyBox's applets, with and without its start-stop-daemon."""
    out = [("sh" + (" + start-stop-daemon" if shutil.which("start-stop-daemon") else ""), ["/bin/sh"],
            os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))]
    bb = shutil.which("busybox")
    if not bb:
        print("    (busybox absent: the script is not tried under BusyBox ash)")
        return out
    applets = run([bb, "--list"]).stdout.decode().split()
    for with_ssd in (True, False):
        d = ctx.path("bb-bin" if with_ssd else "bb-bin-nossd")
        os.mkdir(d)
        for a in applets:
            if a != "start-stop-daemon" or with_ssd:
                os.symlink(bb, os.path.join(d, a))
        out.append(("busybox ash" + (" + its start-stop-daemon" if with_ssd else ", no start-stop-daemon"),
                    [bb, "sh"], d))
    return out


@test(timeout=240)
def init_script_lifecycle(ctx):
    """The installed init script, run from a DESTDIR install with DAEMON and
    CONF pointing into it, under each shell: status 3, start (listening when
    it returns), start again, status 0, reload, a bad file refused by
    reload, restart, stop (bounded, pid file gone), status 1 after a crash,
    a port taken, no pid_file, a bad action."""
    subreaper = become_subreaper()
    dest = ctx.path("root")
    make_install(ctx, dest)
    script = os.path.join(dest, "etc/init.d/wmproxyd")
    daemon = os.path.join(dest, "usr/sbin/wmproxyd")
    etc = os.path.join(dest, "etc/wmproxy")
    os.mkdir(os.path.join(etc, "run"))
    conf = os.path.join(etc, "wmproxy.ini")
    pidf = os.path.join(etc, "run", "wmproxyd.pid")
    logf = ctx.path("daemon.log")
    ctx.closers.append(lambda: kill_pid_file(pidf))

    for label, shell, path in init_shells(ctx):
        print("    init script under %s" % label)
        tport, pub = free_port(), free_port()
        # a relative pid_file (beside CONF), indented, with an inline comment
        good = ("; test configuration\n[server]\nbind_addr = 127.0.0.1:%d\nmap_tcp_bind = 127.0.0.1:%d\n"
                "  pid_file = run/wmproxyd.pid   ; read by the init script\nlog_file = %s\n" % (tport, pub, logf))
        with open(conf, "w") as f:
            f.write(good)
        env = {"PATH": path, "DAEMON": daemon, "CONF": conf, "STOP_TIMEOUT": "10"}

        def init(action, want=0):
            r = run(shell + [script, action], timeout=60, env=env)
            out = (r.stdout + r.stderr).decode()
            assert r.returncode == want, "[%s] %s: exit %d, want %d:\n%s" % (label, action, r.returncode, want, out)
            return out

        assert "not running" in init("status", 3)
        init("start")
        connect_once(tport)
        connect_once(pub)
        pid = read_pid(pidf)
        assert alive(pid)
        assert "running (pid %d)" % pid in init("status", 0)
        assert "already running" in init("start")
        assert read_pid(pidf) == pid

        n = file_text(logf).count("reload")
        init("reload")
        wait_file(logf, r"reload", count=n + 1)
        init("force-reload")
        wait_file(logf, r"reload", count=n + 2)
        with open(conf, "a") as f:
            f.write("bogus = 1\n")
        out = init("reload", 1)
        assert re.search(re.escape(conf) + r":7: unknown key 'bogus'", out), out
        with open(conf, "w") as f:
            f.write(good)
        assert alive(pid)

        init("restart")
        rc = reap(pid, 10)
        assert rc in (0, None), "[%s] daemon exited %s on restart" % (label, rc)
        connect_once(tport)
        pid2 = read_pid(pidf)
        assert pid2 != pid and alive(pid2)

        init("stop")
        assert not alive(pid2), "[%s] stop returned before the daemon exited" % label
        rc = reap(pid2, 5)
        assert rc == 0 or (rc is None and not subreaper), rc
        assert not os.path.exists(pidf)
        assert refused(tport) and refused(pub)
        assert "not running" in init("status", 3)
        assert "not running" in init("stop")

        # a crash leaves the pid file: status 1; stop cleans it up
        init("start")
        pid3 = read_pid(pidf)
        os.kill(pid3, signal.SIGKILL)
        reap(pid3, 5)
        assert "pid file" in init("status", 1)
        init("stop")
        assert not os.path.exists(pidf)
        init("status", 3)

        # start-up failure: the daemon's reason, a non-zero exit
        hold = socket.socket()
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past the TIME_WAITs of connect_once
        hold.bind(("127.0.0.1", pub))
        hold.listen(1)
        try:
            out = init("start", 1)
        finally:
            hold.close()
        assert "Address already in use" in out, out
        init("status", 3)

        with open(conf, "w") as f:
            f.write(good.replace("pid_file", "; pid_file"))
        assert "pid_file" in init("start", 6)
        init("bogus", 2)
        os.remove(conf)
        init("start", 6)
        init("status", 4)
