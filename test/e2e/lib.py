"""Helpers for the end-to-end tests: start the real wmproxyd binaries on
loopback with a config of their own, real peers (sockets, curl), and stop
everything by PID. Every wait has a timeout; nothing sleeps and hopes."""
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WMPROXYD = os.environ.get("WMPROXYD", os.path.join(ROOT, "build/asan/wmproxyd"))
# memory figures are taken from the release build: ASan's shadow memory and
# quarantine would be measured instead of ours
WMPROXYD_REL = os.environ.get("WMPROXYD_REL", os.path.join(ROOT, "wmproxyd"))

TESTS = []

# TLS mode. When on, the mode-aware helpers (server_ini, client_ini,
# start_pair, with tls=None) make every tunnel speak TLS: the server gets
# tc = true and generates its self-signed certificate (or, with stable_cert,
# loads one from files, so that a restarted server keeps its fingerprint),
# and the client gets ts = true with that certificate pinned by the
# fingerprint the server logged at start-up. run.py runs each test that used
# a mode-aware helper a second time with the mode on ("NAME [tls]");
# WMPX_TLS=1 or 0 (or run.py --tls on|off) runs one mode only.
TLS = os.environ.get("WMPX_TLS", "").lower() in ("1", "on", "yes", "true")
_current = None      # the Ctx of the running test


def set_tls(on):
    global TLS
    TLS = bool(on)


def _tls_for(tls):
    """Whether a helper given tls (None: follow the mode) adds TLS keys; a
    helper that followed the mode marks its test as one to run in both."""
    if tls is None:
        if _current is not None:
            _current.mode_used = True
        return TLS
    return bool(tls)


class Skip(Exception):
    pass


def test(timeout=60):
    def deco(fn):
        TESTS.append((fn, timeout))
        return fn
    return deco


class Ctx:
    """Per-test state: a temp dir and everything started, stopped at the end."""

    def __init__(self, tmp):
        global _current
        self.tmp = tmp
        self.procs = []
        self.closers = []
        self.daemons = []
        self.mode_used = False    # a helper followed the TLS mode (see set_tls)
        _current = self

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def cleanup(self):
        for c in reversed(self.closers):
            try:
                c()
            except Exception:
                pass
        for p in self.procs:
            p.kill()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out = set()


def _candidate():
    """A port to try. Never the same port twice in a run: one picked but not
    yet bound is still free, and bind(0) once gave one scene the same port
    for map_tcp_bind and a remote_port (the second bind failed, EADDRINUSE).
    Below the kernel's ephemeral range where there is room: a port bind(0)
    picked and let go can also be taken by an outgoing connection (a
    client's own tunnel, a test's connect) before the daemon binds it; an
    outgoing connection never takes a port below that range."""
    lo = max(_EPHEMERAL_LOW - 20000, 10000)
    while True:
        if _EPHEMERAL_LOW - lo >= 2000:
            port = random.randrange(lo, _EPHEMERAL_LOW)
        else:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
        if port not in _handed_out:
            return port


def _free(port, family, host, v6only=None):
    """True when TCP and UDP can both bind host:port right now."""
    socks = []
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            k = socket.socket(family, kind)
            socks.append(k)
            if v6only is not None:
                k.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            k.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for k in socks:
            k.close()


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1 right now."""
    while True:
        port = _candidate()
        if _free(port, socket.AF_INET, "127.0.0.1"):
            _handed_out.add(port)
            return port


def free_port_all():
    """A port free for TCP and UDP on every address (IPv4 and IPv6): the
    listeners of these tests bind on all addresses (":P", or a remote_port
    without a host), where lib.free_port's check of 127.0.0.1 alone is not
    enough."""
    while True:
        port = _candidate()
        if _free(port, socket.AF_INET6, "::", 0):
            _handed_out.add(port)
            return port


def have_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def wait_until(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


def wait_port(port, timeout=10, host="127.0.0.1"):
    def ok():
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_until(ok, timeout, "port %d to accept" % port)


class Daemon:
    def __init__(self, ctx, name, ini, binary=None, args=()):
        self.ctx = ctx
        self.name = name
        self.ini = ini
        self.conf = ctx.write(name + ".ini", ini)
        self.log = ctx.path(name + ".log")
        self.binary = binary or WMPROXYD
        self.args = list(args)
        self.proc = None
        ctx.daemons.append(self)

    def start(self):
        self.logf = open(self.log, "ab")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.proc = subprocess.Popen([self.binary, "-f", self.conf] + self.args, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env)
        self.ctx.procs.append(self.proc)
        self.ctx.closers.append(self.stop)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=10, count=1):
        rx = re.compile(pattern)

        def seen():
            if self.proc.poll() is not None and len(rx.findall(self.text())) < count:
                raise AssertionError("%s exited (%s) before logging /%s/:\n%s" % (
                    self.name, self.proc.returncode, pattern, self.text()[-3000:]))
            return len(rx.findall(self.text())) >= count
        try:
            wait_until(seen, timeout, "%s to log /%s/" % (self.name, pattern))
        except AssertionError as e:
            if "timed out" in str(e):
                raise AssertionError("%s\n--- %s log ---\n%s" % (e, self.name, self.text()[-3000:]))
            raise

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10):
        """SIGTERM; the daemon must exit 0 in time and leak nothing (ASan)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("%s did not stop within %ss of SIGTERM" % (self.name, timeout))
        self.logf.close()
        return rc

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def status(self, key):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # kB
        return 0

    def private_kb(self):
        """RssAnon less anonymous executable memory, in kB. A native wmproxyd
        has none; under qemu-user (make check-cross) that is the translator's
        code cache, which grows by 2 MiB huge pages as new guest code first
        runs, whenever that happens, and is never the daemon's."""
        kb, jit = self.status("RssAnon"), False
        with open("/proc/%d/smaps" % self.pid) as f:
            for line in f:
                w = line.split()
                if not w:
                    continue
                if not w[0].endswith(":"):          # a mapping: address perms offset dev inode [path]
                    jit = "x" in w[1] and len(w) < 6
                elif jit and w[0] == "Anonymous:":
                    kb -= int(w[1])
        return kb

    def wait_private_back(self, base, bound, during):
        """Waits up to 8 s for private_kb() to come back within bound kB of
        base; the failure gives base, during (the figure under load) and
        what it is now."""
        try:
            wait_until(lambda: self.private_kb() <= base + bound, 8,
                       "the %s's RssAnon back within %d KiB of the start" % (self.name, bound))
        except AssertionError as e:
            raise AssertionError("%s: %d kB at the start, %s, %d kB now" % (e, base, during, self.private_kb()))


MKCERTS = os.path.join(ROOT, "scripts", "mkcerts")


def mkcerts(dir, server_name=None):
    """scripts/mkcerts into dir (which must not hold its files yet): a CA,
    server.pem/key signed by it for server_name (default localhost, which
    also covers 127.0.0.1), client.pem/key. Returns dir."""
    r = run([MKCERTS, dir] + ([server_name] if server_name else []))
    assert r.returncode == 0, "mkcerts %s: %s" % (dir, r.stderr.decode())
    return dir


def stable_cert():
    """(cert, key) of a server certificate kept in files for the running
    test, made on first use: a restarted server keeps its fingerprint."""
    d = _current.path("tls-stable")
    if not os.path.exists(os.path.join(d, "server.pem")):
        mkcerts(d)
    return os.path.join(d, "server.pem"), os.path.join(d, "server.key")


def cert_fingerprint(pem):
    """"AB:CD:.." SHA-256 of the certificate in pem, as openssl computes it."""
    r = run(["openssl", "x509", "-in", pem, "-noout", "-fingerprint", "-sha256"])
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip().split("=", 1)[1]


TLS_ON_RX = r"tls on \S+:%d certificate sha256=([0-9A-F:]{95})"


def tls_pin(port, timeout=10):
    """The fingerprint the latest TLS server of this test bound to port
    logged at start-up ("tls on ADDR:PORT certificate sha256=AB:CD.."),
    waiting for that line if the server is still starting."""
    bind = "bind_addr = 127.0.0.1:%d\n" % port
    for d in reversed(_current.daemons if _current else []):
        if d.proc is None or bind not in d.ini or not re.search(r"(?m)^tc = true$", d.ini):
            continue
        rx = TLS_ON_RX % port
        d.wait_log(rx, timeout=timeout)
        return re.findall(rx, d.text())[-1]
    raise AssertionError("no TLS server on port %d started in this test to pin" % port)


def server_ini(port, extra="", tls=None, stable_cert_files=False):
    """A [server] on 127.0.0.1:port. tls: None follows the TLS mode, True or
    False forces it. stable_cert_files: under TLS, a certificate from files
    (the same for every server of the test) instead of a generated one."""
    head = "[server]\nbind_addr = 127.0.0.1:%d\n" % port
    if _tls_for(tls):
        head += "tc = true\n"
        if stable_cert_files:
            head += "cert = %s\nkey = %s\n" % stable_cert()
    return head + extra


def client_ini(port, extra="", mappings="", tls=None, pin=None, reconnect=("200ms", "2s")):
    """A [client] of 127.0.0.1:port. tls: None follows the TLS mode, True or
    False forces it; under TLS the server certificate is pinned: pin, else
    the fingerprint logged by this test's TLS server on that port (start
    it first)."""
    head = "[client]\nserver = 127.0.0.1:%d\nreconnect_min = %s\nreconnect_max = %s\n" % (
        (port,) + tuple(reconnect))
    if _tls_for(tls):
        head += "ts = true\nfingerprint = %s\n" % (pin or tls_pin(port))
    return "%s%s\n%s" % (head, extra, mappings)


def tcp_mapping(name, local_port, remote_port=None, extra=""):
    s = "[mapping %s]\nmode = tcp\nlocal_addr = 127.0.0.1:%d\n" % (name, local_port)
    if remote_port:
        s += "remote_port = %d\n" % remote_port
    return s + extra


def serve_in_thread(ctx, sock, loop):
    """Run loop() (which blocks on sock) in a thread until the test ends.
    The end shuts sock down first, which wakes the thread (accept() fails,
    recvfrom() returns nothing), waits for the thread, and only then closes
    sock. Closing a descriptor a thread is blocked on does not wake it:
    the socket would live on with the thread (a closed service went on
    answering on its port), and a thread about to enter its call could
    meet the number reused by a later test's socket. Returns that stop
    function, for a test that stops the service early."""
    t = threading.Thread(target=loop, daemon=True)

    def stop():
        if sock.fileno() < 0:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass   # ENOTCONN for UDP: its receivers are woken all the same
        t.join(5)
        if t.is_alive():
            print("    warning: a service thread did not stop; its socket is left open")
        else:
            sock.close()
    ctx.closers.append(stop)
    t.start()
    return stop


class TcpServer:
    """A threaded TCP service on loopback; handler(conn) per connection."""

    def __init__(self, ctx, handler, port=None, host="127.0.0.1", family=socket.AF_INET, sock=None):
        if sock is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port or 0))
        self.sock = sock
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.conns = []
        self.accepted = 0
        self.closed = False
        self._stop = serve_in_thread(ctx, self.sock, self._loop)

    def _loop(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.handler(c)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        self._stop()


def echo_handler(c):
    while True:
        d = c.recv(65536)
        if not d:
            c.shutdown(socket.SHUT_WR)
            return
        c.sendall(d)


def http_page_handler(body):
    def h(c):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            if not d:
                return
            buf += d
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    return h


def pattern_bytes(seed, n):
    """Deterministic pseudo-random bytes, fast enough for hundreds of MiB."""
    block = hashlib.sha256(b"%d" % seed).digest() * 2048  # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d-%d" % (seed, i)).digest() + block[32:]
        i += 1
    return bytes(out[:n])


def recv_all(sock, limit=None):
    out = bytearray()
    while True:
        d = sock.recv(1 << 20)
        if not d:
            return bytes(out)
        out += d
        if limit is not None and len(out) >= limit:
            return bytes(out)


def recv_count(sock):
    """Read to the EOF, keeping nothing; the number of bytes."""
    n = 0
    buf = bytearray(1 << 20)
    while True:
        k = sock.recv_into(buf)
        if not k:
            return n
        n += k


def run(cmd, timeout=30, **kw):
    return subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)


def mount_ns_binary(ctx, files, binary=None):
    """A wrapper script that runs the daemon (binary, default WMPROXYD) in a
    mount namespace of its own where each system file named in files
    ({"/etc/resolv.conf": text, ...}) is replaced by the text given; its
    pid is the daemon's (exec all the way). Raises Skip where mount
    namespaces cannot be made (not root, no unshare)."""
    binds = []
    for i, (target, text) in enumerate(sorted(files.items())):
        binds.append((ctx.write("bind%d" % i, text), target))
    mounts = " && ".join('mount --bind %s %s' % (src, dst) for src, dst in binds)
    probe = run(["unshare", "-m", "sh", "-c", mounts])
    if probe.returncode != 0:
        raise Skip("no mount namespace here: %s" % probe.stderr.decode().strip())
    wrap = ctx.write("ns-wrap.sh", '#!/bin/sh\nexec unshare -m sh -c \'%s && exec "$0" "$@"\' %s "$@"\n' % (
        mounts, binary or WMPROXYD))
    os.chmod(wrap, 0o755)
    return wrap


def start_pair(ctx, mappings, server_extra="", client_extra="", binary=None, wait=True, tls=None,
               stable_cert_files=False):
    """A server and a client on loopback; returns (server, client, tunnel port).
    tls and stable_cert_files: as for server_ini and client_ini."""
    tport = free_port()
    s = Daemon(ctx, "server", server_ini(tport, server_extra, tls, stable_cert_files), binary=binary).start()
    s.wait_log(r"listening for tunnels")
    c = Daemon(ctx, "client", client_ini(tport, client_extra, mappings, tls), binary=binary).start()
    if wait:
        c.wait_log(r"tunnel up", timeout=15)
        n = mappings.count("[mapping ")
        if n:
            c.wait_log(r"mapping (registered|rejected)", count=n, timeout=15)
    return s, c, tport


def connect(port, timeout=10, host="127.0.0.1"):
    return socket.create_connection((host, port), timeout=timeout)


def wait_closed(sock, timeout):
    """Read (and drop) until the peer closes: EOF or a reset. Returns the
    seconds it took; fails if the socket is still open after timeout."""
    end = time.monotonic() + timeout
    t0 = time.monotonic()
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("connection still open after %.1fs" % timeout)
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except socket.timeout:
            raise AssertionError("connection still open after %.1fs" % timeout)
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0


def closed_at_once(port, timeout, host="127.0.0.1"):
    """Connect to a port whose daemon is expected to close the connection
    (EOF or a reset) within timeout. A reset can beat connect()'s own
    completion check on a busy machine: that is closed too."""
    t0 = time.monotonic()
    try:
        sock = connect(port, timeout, host)
    except ConnectionResetError:
        return
    try:
        wait_closed(sock, timeout - (time.monotonic() - t0))
    finally:
        sock.close()


def refused(port, host="127.0.0.1"):
    """True when nothing listens on port (connect refused)."""
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False   # accepted into the backlog of a listener closing right then


def echo_once(port, payload=b"ping", timeout=10):
    """One connection: send payload, half-close, return what came back."""
    s = connect(port, timeout)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)
    finally:
        s.close()


def reply_handler(data):
    """A service that answers every connection with data, then closes."""
    def h(c):
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
    return h


def log_lines(text, pattern):
    """The match objects of pattern, line by line, in order."""
    rx = re.compile(pattern)
    return [m for m in (rx.search(l) for l in text.splitlines()) if m]


# ---- UDP mappings (test_udp, test_hostile) ----

def udp_mapping(name, local_port, remote_port=None, extra=""):
    s = "[mapping %s]\nmode = udp\nlocal_addr = 127.0.0.1:%d\n" % (name, local_port)
    if remote_port:
        s += "remote_port = %d\n" % remote_port
    return s + extra


class UdpEcho:
    """A UDP echo service on 127.0.0.1: every datagram goes back to its
    sender unchanged. Remembers the source addresses it saw."""

    def __init__(self, ctx):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers = set()
        self.count = 0
        serve_in_thread(ctx, self.sock, self._loop)

    def _loop(self):
        while True:
            try:
                d, a = self.sock.recvfrom(65536)
                if a is None:
                    return   # shut down: the test is over
                self.peers.add(a)
                self.count += 1
                self.sock.sendto(d, a)
            except OSError:
                return


def user_socket(host="127.0.0.1", timeout=10):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    u.bind((host, 0))
    u.settimeout(timeout)
    return u


def roundtrip(port, payload, host="127.0.0.1", tries=3):
    """Send payload from a fresh socket and wait for it to come back; a
    datagram may be dropped, so up to `tries` attempts of 3 s."""
    u = user_socket(host, 3)
    try:
        for _ in range(tries):
            u.sendto(payload, (host, port))
            try:
                d = u.recv(65536)
                return d
            except socket.timeout:
                continue
        raise AssertionError("no answer to a %d-byte datagram from %s after %d tries" % (len(payload), host, tries))
    finally:
        u.close()


def wait_udp_up(port, host="127.0.0.1"):
    """The mapping is registered and the client resolved local_addr: a
    datagram makes the round trip."""
    assert roundtrip(port, b"hello", host, tries=10) == b"hello"
