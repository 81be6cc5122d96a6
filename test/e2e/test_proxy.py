"""Forward proxy end to end: HTTP proxy, CONNECT and SOCKS5 (TCP and UDP)
on the server's bind_addr, through a client's bind_addr and through a proxy
mapping; credentials, flag, failures, a dead resolver."""
import hashlib
import os
import re
import signal
import socket
import ssl
import struct
import threading
import time

from lib import (WMPROXYD, WMPROXYD_REL, Daemon, Skip, TcpServer, connect, echo_handler, free_port, have_ipv6,
                 mkcerts, mount_ns_binary, pattern_bytes, serve_in_thread, run, server_ini, start_pair, test, wait_closed, wait_until)

CURL = ["curl", "-sS", "--max-time", "20", "--noproxy", ""]


# ---- local origins ----

def read_head(f):
    """Lines of a head up to the empty line (leading empty lines skipped);
    None at EOF."""
    lines = []
    while True:
        line = f.readline(65536)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return lines
            continue
        lines.append(line)


def parse_fields(lines):
    h = {}
    for l in lines[1:]:
        k, _, v = l.decode("latin-1").partition(":")
        h[k.strip().lower()] = v.strip()
    return h


def read_body(f, h, status=200, head=False, sink=None):
    """The body framed by h, read whole, or fed to sink(bytes) piece by
    piece (then b"" is returned)."""
    if head or status in (204, 304) or 100 <= status < 200:
        return b""
    out = bytearray()
    put = sink or out.extend
    if "chunked" in h.get("transfer-encoding", "").lower():
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            while size:
                d = f.read(min(size, 1 << 20))
                assert d, "body cut short"
                put(d)
                size -= len(d)
            f.readline()
    if "content-length" in h:
        left = int(h["content-length"])
        while left:
            d = f.read(min(left, 1 << 20))
            assert d, "body cut short"
            put(d)
            left -= len(d)
        return bytes(out)
    return None     # request: none; response: until close


class Origin:
    """An HTTP/1.1 origin with keep-alive (over TLS when tls=(cert, key)).
    Paths: / (a page naming the origin and the target), /headers (the head
    as received), /big/N (N pattern bytes), /stream/N (N random bytes sent
    as they are made, SHA-256 in sent[path]), /chunked, /close (delimited by
    the close), /204, /sha (SHA-256 of the request body), /ws (101 to
    "Upgrade: test", then an echo until EOF). Answers 100
    Continue to Expect. accepted counts its connections."""

    def __init__(self, ctx, name, host="127.0.0.1", family=socket.AF_INET, tls=None):
        self.name = name
        self.heads = []
        self.sent = {}
        self.sslctx = None
        if tls:
            self.sslctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.sslctx.load_cert_chain(*tls)
        self.srv = TcpServer(ctx, self._serve, host=host, family=family)
        self.port = self.srv.port

    @property
    def accepted(self):
        return self.srv.accepted

    def _serve(self, c):
        c.settimeout(30)
        if self.sslctx:
            c = self.sslctx.wrap_socket(c, server_side=True)
        f = c.makefile("rb")
        while True:
            lines = read_head(f)
            if lines is None:
                return
            method, target, version = lines[0].decode().split()
            h = parse_fields(lines)
            self.heads.append(b"".join(lines).decode("latin-1"))
            if h.get("expect", "").lower() == "100-continue":
                c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            path = re.sub(r"^https?://[^/]*", "", target)
            sha = hashlib.sha256()
            body = read_body(f, h, sink=sha.update if path == "/sha" else None) or b""
            keep = version == "HTTP/1.1" and h.get("connection", "").lower() != "close"
            status = 200
            if path.startswith("/headers"):
                out = b"".join(lines)
            elif path.startswith("/big/"):
                out = pattern_bytes(7, int(path[5:]))
            elif path == "/sha":
                out = sha.hexdigest().encode()
            elif path.startswith("/stream/"):
                n = int(path[8:])
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                dig = hashlib.sha256()
                while n:
                    d = os.urandom(min(n, 1 << 20))
                    dig.update(d)
                    c.sendall(d)
                    n -= len(d)
                self.sent[path] = dig.hexdigest()
                continue
            elif path == "/204":
                status, out = 204, b""
            elif path == "/chunked":
                parts = [b"part %d\n" % i for i in range(50)]
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
                          b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")
                continue
            elif path == "/ws" and h.get("upgrade") == "test" and "upgrade" in h.get("connection", "").lower():
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
                while True:
                    d = f.read1(65536)
                    if not d:
                        c.shutdown(socket.SHUT_WR)
                        return
                    c.sendall(d)
            elif path == "/close":
                c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-delimited body\n")
                return
            else:
                out = ("hello from %s %s\n" % (self.name, target)).encode()
            if status == 204:
                hdr = b"HTTP/1.1 204 No Content\r\n"
            else:
                hdr = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(out)
            if not keep:
                hdr += b"Connection: close\r\n"
            c.sendall(hdr + b"\r\n" + (b"" if method == "HEAD" or status == 204 else out))
            if not keep:
                return


def udp_echo(ctx, host="127.0.0.1"):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((host, 0))

    def loop():
        while True:
            try:
                d, a = u.recvfrom(65536)
                if a is None:
                    return   # shut down: the test is over
                u.sendto(d, a)
            except OSError:
                return
    serve_in_thread(ctx, u, loop)
    return u.getsockname()[1]


def proxy_server(ctx, extra="", flag="7", tls=False):
    """A server whose bind_addr serves proxy users; returns (daemon, port)."""
    port = free_port()
    d = Daemon(ctx, "server", server_ini(port, "flag = %s\nlog_level = debug\naccess_log = %s\n%s" % (
        flag, ctx.path("access.log"), extra), tls=tls)).start()
    d.wait_log(r"listening for tunnels")
    return d, port


def curl(*args, timeout=30):
    return run(CURL + list(args), timeout=timeout)


def access_lines(ctx):
    try:
        with open(ctx.path("access.log")) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


# ---- a tiny SOCKS5 client ----

def socks5_open(port, user=None, pw=None, host="127.0.0.1"):
    """Greeting (and RFC 1929 auth when user is given). Returns the socket,
    or raises AssertionError with what the server answered."""
    s = connect(port, host=host)
    s.sendall(b"\x05\x01\x02" if user else b"\x05\x01\x00")
    m = s.recv(2)
    assert m == (b"\x05\x02" if user else b"\x05\x00"), "method reply %r" % m
    if user:
        s.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
        r = s.recv(2)
        assert r == b"\x01\x00", "auth reply %r" % r
    return s


def socks5_reply(s):
    r = b""
    while len(r) < 5:
        d = s.recv(5 - len(r))
        if not d:
            raise AssertionError("closed after %r" % r)
        r += d
    n = {1: 4 + 2 - 1, 4: 16 + 2 - 1, 3: r[4] + 2}[r[3]]
    while len(r) < 5 + n:
        r += s.recv(5 + n - len(r))
    return r


def socks5_request(s, cmd, atyp, addr, port):
    s.sendall(b"\x05" + bytes([cmd, 0, atyp]) + addr + struct.pack(">H", port))
    return socks5_reply(s)


# ---- HTTP proxy ----

@test(timeout=60)
def http_proxy_page_and_rewrite(ctx):
    """curl -x fetches a page; the origin sees origin form, Host from the
    URI, no Proxy-* field; HEAD, 204, chunked and close-delimited answers."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx)
    r = curl("-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % o.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from A /\n", r.stdout
    r = curl("-x", "http://127.0.0.1:%d" % p, "-H", "Proxy-Connection: keep-alive", "-H", "Proxy-Foo: x",
             "-H", "Host: elsewhere.example", "http://127.0.0.1:%d/headers?q=1" % o.port)
    head = r.stdout.decode()
    assert head.startswith("GET /headers?q=1 HTTP/1.1\r\n"), head
    assert "\r\nHost: 127.0.0.1:%d\r\n" % o.port in head, head
    assert "elsewhere" not in head and "Proxy-" not in head, head
    r = curl("-i", "-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/chunked" % o.port)
    assert b"part 49\n" in r.stdout and r.stdout.count(b"part ") == 50, r.stdout
    r = curl("-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/close" % o.port,
             "http://127.0.0.1:%d/" % o.port)
    assert r.stdout == b"close-delimited body\nhello from A /\n", r.stdout

    # HEAD, 204 and a GET pipelined on one connection
    s = connect(p)
    base = "http://127.0.0.1:%d" % o.port
    s.sendall(("HEAD %s/ HTTP/1.1\r\nHost: x\r\n\r\nGET %s/204 HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET %s/ HTTP/1.1\r\nHost: x\r\n\r\n" % (base, base, base)).encode())
    f = s.makefile("rb")
    got = []
    for method in ("HEAD", "GET", "GET"):
        lines = read_head(f)
        h = parse_fields(lines)
        st = int(lines[0].split()[1])
        got.append((st, read_body(f, h, st, method == "HEAD")))
    s.close()
    assert got == [(200, b""), (204, b""), (200, b"hello from A /\n")], got
    d.wait_log(r"proxy 127\.0\.0\.1:\d+: HEAD http://127\.0\.0\.1:%d/" % o.port)
    lines = access_lines(ctx)
    assert any(re.search(r"127\.0\.0\.1:\d+ proxy GET http://127\.0\.0\.1:%d/ 200 \d+ \d+ \d+ms" % o.port, l)
               for l in lines), lines


@test(timeout=60)
def http_proxy_rfc_edges(ctx):
    """A Content-Length sent twice (equal) reaches the origin once (RFC 9110
    8.6); an HTTP/1.0 user gets the answer without the origin's 100
    Continue (RFC 9110 15.2); an absolute URI with a query and no path
    reaches the origin as "/?query"."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx)
    base = "http://127.0.0.1:%d" % o.port
    s = connect(p)
    s.sendall(("POST %s/headers HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
               % base).encode())
    f = s.makefile("rb")
    lines = read_head(f)
    head = read_body(f, parse_fields(lines)).decode("latin-1")
    s.close()
    assert head.startswith("POST /headers HTTP/1.1\r\n"), head
    assert head.lower().count("content-length:") == 1 and "Content-Length: 3\r\n" in head, head
    s = connect(p)
    s.sendall(("POST %s/ HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
               % base).encode())
    raw = b""
    while True:
        x = s.recv(65536)
        if not x:
            break
        raw += x
    s.close()
    assert raw.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in raw, raw
    assert raw.endswith(b"hello from A /\n"), raw
    # a query and no path: forwarded as "/?query"
    r = curl("-x", "http://127.0.0.1:%d" % p, "--request-target", base + "?q=1", base + "/")
    assert r.stdout == b"hello from A /?q=1\n", (r.stdout, r.stderr)


@test(timeout=60)
def http_proxy_upgrade(ctx):
    """An Upgrade request through the HTTP proxy: 101 passes, then the
    connection is a raw relay with half-close."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx)
    s = connect(p)
    s.sendall(b"GET http://127.0.0.1:%d/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
              b"Upgrade: test\r\n\r\n" % o.port)
    f = s.makefile("rb")
    lines = read_head(f)
    assert lines[0].startswith(b"HTTP/1.1 101 "), lines
    h = parse_fields(lines)
    assert h.get("upgrade") == "test" and h.get("connection", "").lower() == "upgrade", h
    s.sendall(b"raw bytes")
    assert f.read1(100) == b"raw bytes"
    s.shutdown(socket.SHUT_WR)
    assert f.read() == b""
    s.close()
    wait_until(lambda: any(" proxy GET http://127.0.0.1:%d/ws 101 " % o.port in l for l in access_lines(ctx)), 5,
               "the upgraded request's access line")


@test(timeout=60)
def http_proxy_keepalive_across_hosts(ctx):
    """Two origins on different hosts in one curl run: one proxy
    connection carries both; the same host twice reuses the upstream."""
    a = Origin(ctx, "A", host="127.0.0.1")
    b = Origin(ctx, "B", host="127.0.0.2")
    d, p = proxy_server(ctx)
    r = curl("-v", "-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % a.port,
             "http://127.0.0.2:%d/" % b.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from A /\nhello from B /\n", r.stdout
    assert b"Re-using existing connection" in r.stderr, r.stderr.decode()
    peers = set(re.findall(r"(127\.0\.0\.1:\d+) proxy GET", "\n".join(access_lines(ctx))))
    assert len(peers) == 1, access_lines(ctx)
    r = curl("-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/1" % a.port,
             "http://127.0.0.1:%d/2" % a.port)
    assert r.stdout == b"hello from A /1\nhello from A /2\n", r.stdout
    assert a.accepted == 2 and b.accepted == 1, (a.accepted, b.accepted)


@test(timeout=90)
def http_proxy_bodies_stream(ctx):
    """32 MiB down with Content-Length, 8 MiB up chunked and with
    Expect: 100-continue; bytes intact."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx)
    n = 32 << 20
    r = curl("-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/big/%d" % (o.port, n), timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == n and r.stdout == pattern_bytes(7, n), "download differs"
    body = os.urandom(8 << 20)
    fn = ctx.write("up.bin", "")
    with open(fn, "wb") as f:
        f.write(body)
    want = hashlib.sha256(body).hexdigest().encode()
    r = curl("-x", "http://127.0.0.1:%d" % p, "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + fn,
             "http://127.0.0.1:%d/sha" % o.port, timeout=60)
    assert r.stdout == want, (r.stdout, r.stderr)
    r = curl("-v", "-x", "http://127.0.0.1:%d" % p, "-H", "Expect: 100-continue", "--data-binary", "@" + fn,
             "http://127.0.0.1:%d/sha" % o.port, timeout=60)
    assert r.stdout == want, (r.stdout, r.stderr)
    assert b"< HTTP/1.1 100 Continue" in r.stderr, r.stderr.decode()


@test(timeout=180)
def bounded_memory_both_ways(ctx):
    """Release build: a user that stops reading a 128 MiB answer and an
    origin that reads a 128 MiB upload: bytes intact, RSS stays small (the
    session holds a few buffers, never the body)."""
    if not os.path.exists(WMPROXYD_REL):
        raise Skip("no release binary %s (make wmproxyd)" % WMPROXYD_REL)
    o = Origin(ctx, "A")
    port = free_port()
    d = Daemon(ctx, "server", server_ini(port, "flag = 7\n", tls=False), binary=WMPROXYD_REL).start()
    d.wait_log(r"listening for tunnels")
    base = d.status("VmRSS")
    n = 128 << 20
    for mode in ("http", "connect"):
        s = connect(port, 60)
        path = "/stream/%d" % n
        if mode == "http":
            s.sendall(b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: x\r\n\r\n" % (o.port, path.encode()))
        else:
            s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % o.port)
        f = s.makefile("rb")
        if mode == "connect":
            assert read_head(f)[0].startswith(b"HTTP/1.1 200 ")
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        lines = read_head(f)
        assert lines[0].startswith(b"HTTP/1.1 200 "), lines
        time.sleep(1.5)     # not reading: the proxy must stop reading too
        held = d.status("VmRSS")
        dig = hashlib.sha256()
        assert read_body(f, parse_fields(lines), sink=dig.update) == b""
        wait_until(lambda: path in o.sent, 10, "the origin to finish")
        assert dig.hexdigest() == o.sent.pop(path), "download differs (%s)" % mode
        s.close()
        assert held - base < 4096, "RSS grew %d kB while the user did not read (%s)" % (held - base, mode)
    s = connect(port, 60)
    s.sendall(b"POST http://127.0.0.1:%d/sha HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % o.port)
    dig = hashlib.sha256()
    for _ in range(128):
        chunk = os.urandom(1 << 20)
        dig.update(chunk)
        s.sendall(b"100000\r\n" + chunk + b"\r\n")
    s.sendall(b"0\r\n\r\n")
    f = s.makefile("rb")
    lines = read_head(f)
    assert read_body(f, parse_fields(lines)) == dig.hexdigest().encode()
    s.close()
    top = d.status("VmRSS")
    assert top - base < 4096, "RSS grew %d kB" % (top - base)
    assert d.stop() == 0


@test(timeout=60)
def http_proxy_failures(ctx):
    """Refused target 502, unresolvable name 502, a request that is not a
    proxy request 400, an incomplete request closed after
    handshake_timeout; each logged."""
    d, p = proxy_server(ctx, "handshake_timeout = 1s\n")
    dead = free_port()
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % dead)
    assert r.stdout == b"502", r.stdout
    d.wait_log(r"connect 127\.0\.0\.1:%d: Connection refused" % dead)
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", "http://127.0.0.1:%d" % p, "http://no-such-host.invalid/")
    assert r.stdout == b"502", r.stdout
    d.wait_log(r"resolve no-such-host\.invalid:80: ")
    r = curl("-p", "-o", "/dev/null", "-w", "%{http_connect}", "-x", "http://127.0.0.1:%d" % p,
             "http://127.0.0.1:%d/" % dead)
    assert r.stdout == b"502", r.stdout
    s = connect(p)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400 "), "origin-form request not refused"
    s.close()
    s = connect(p)
    s.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\n")
    t = wait_closed(s, 5)
    assert t < 4, t
    d.wait_log(r"no complete proxy request within handshake_timeout")


# ---- CONNECT ----

@test(timeout=60)
def connect_to_https_origin(ctx):
    """curl through CONNECT to an HTTPS origin (its certificate verified
    end to end), and -p for a plain origin."""
    certs = mkcerts(ctx.path("certs"))
    o = Origin(ctx, "S", tls=(os.path.join(certs, "server.pem"), os.path.join(certs, "server.key")))
    plain = Origin(ctx, "A")
    d, p = proxy_server(ctx)
    r = curl("--cacert", os.path.join(certs, "ca.pem"), "-x", "http://127.0.0.1:%d" % p,
             "https://localhost:%d/" % o.port, "https://127.0.0.1:%d/x" % o.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from S /\nhello from S /x\n", r.stdout
    r = curl("-p", "-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % plain.port)
    assert r.stdout == b"hello from A /\n", r.stderr
    wait_until(lambda: any(re.search(r" proxy CONNECT 127\.0\.0\.1:%d 200 \d+ \d+ " % plain.port, l)
                           for l in access_lines(ctx)), 5, "the CONNECT's access line")


@test(timeout=60)
def proxy_on_tls_bind_addr(ctx):
    """With tc = true the proxy users speak TLS to bind_addr (an HTTPS proxy)."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx, tls=True)
    r = curl("--proxy-insecure", "-x", "https://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % o.port,
             "http://127.0.0.1:%d/again" % o.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from A /\nhello from A /again\n", r.stdout
    r = curl("--proxy-insecure", "-p", "-x", "https://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % o.port)
    assert r.stdout == b"hello from A /\n", r.stderr


# ---- SOCKS5 ----

@test(timeout=60)
def socks5_connect(ctx):
    """curl --socks5-hostname to a name, --socks5 to an IPv6 literal; BIND
    and an unknown address type answered; refused target REP 5."""
    dual = Origin(ctx, "D", host="::", family=socket.AF_INET6)
    v6 = Origin(ctx, "six", host="::1", family=socket.AF_INET6)
    d, p = proxy_server(ctx)
    r = curl("--socks5-hostname", "127.0.0.1:%d" % p, "http://localhost:%d/" % dual.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from D /\n", r.stdout
    r = curl("--socks5", "127.0.0.1:%d" % p, "http://[::1]:%d/" % v6.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from six /\n", r.stdout
    s = socks5_open(p)
    assert socks5_request(s, 2, 1, socket.inet_aton("127.0.0.1"), 80)[1] == 7
    s.close()
    s = socks5_open(p)
    s.sendall(b"\x05\x01\x00\x09")
    assert s.recv(10)[:2] == b"\x05\x08"
    s.close()
    s = socks5_open(p)
    assert socks5_request(s, 1, 1, socket.inet_aton("127.0.0.1"), free_port())[1] == 5
    s.close()
    wait_until(lambda: any(re.search(r" proxy socks5 localhost:%d 0 \d+ \d+ " % dual.port, l)
                           for l in access_lines(ctx)), 5, "the socks5 access line")


@test(timeout=60)
def socks5_udp_associate(ctx):
    """UDP ASSOCIATE: a datagram to a local echo server (by address and by
    name) comes back wrapped with the SOCKS5 header; the association ends
    with its TCP connection."""
    echo = udp_echo(ctx)
    d, p = proxy_server(ctx)
    s = socks5_open(p)
    r = socks5_request(s, 3, 1, socket.inet_aton("0.0.0.0"), 0)
    assert r[1] == 0 and r[3] == 1, r
    relay = (socket.inet_ntoa(r[4:8]), struct.unpack(">H", r[8:10])[0])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(5)
    hdr = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo)
    u.sendto(hdr + b"hello udp", relay)
    data, src = u.recvfrom(65536)
    assert src == relay, src
    assert data == hdr + b"hello udp", data
    # by name: the first datagram waits for the lookup
    name = b"localhost"
    u.sendto(b"\x00\x00\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", echo) + b"by name", relay)
    data, _ = u.recvfrom(65536)
    assert data == hdr + b"by name", data
    # a fragment is dropped: the next datagram's answer is the first to come
    u.sendto(b"\x00\x00\x01\x01" + hdr[4:] + b"frag", relay)
    u.sendto(hdr + b"after", relay)
    assert u.recvfrom(65536)[0] == hdr + b"after"
    s.close()
    d.wait_log(r"socks5-udp|socks5 udp|UDP ASSOCIATE|proxy 127\.0\.0\.1:\d+: socks5-udp", timeout=5)
    wait_until(lambda: any(" proxy socks5-udp " in l for l in access_lines(ctx)), 5, "the association to end")
    u.settimeout(1)
    u.sendto(hdr + b"late", relay)
    try:
        late = u.recvfrom(65536)
    except socket.timeout:
        late = None
    assert late is None, late
    u.close()


# ---- authentication ----

@test(timeout=60)
def credentials_required(ctx):
    """With username/password: right ones pass (a ':' in the password);
    wrong or missing get 407 (HTTP, CONNECT) or a SOCKS5 refusal, and the
    origin never sees a connection."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx, "username = user\npassword = pa:ss\n")
    px = "http://127.0.0.1:%d" % p
    url = "http://127.0.0.1:%d/" % o.port
    r = curl("-U", "user:pa:ss", "-x", px, url)
    assert r.stdout == b"hello from A /\n", r.stderr
    r = curl("-p", "-U", "user:pa:ss", "-x", px, url)
    assert r.stdout == b"hello from A /\n", r.stderr
    r = curl("--socks5", "127.0.0.1:%d" % p, "--proxy-user", "user:pa:ss", url)
    assert r.stdout == b"hello from A /\n", r.stderr
    assert o.accepted == 3, o.accepted
    for cred in (["-U", "user:wrong"], ["-U", "nobody:pa:ss"], []):
        r = curl("-D", "-", "-o", "/dev/null", "-x", px, *cred, url)
        assert r.stdout.startswith(b"HTTP/1.1 407 "), r.stdout
        assert b'Proxy-Authenticate: Basic realm="wmproxy"' in r.stdout, r.stdout
        r = curl("-p", "-o", "/dev/null", "-w", "%{http_connect}", "-x", px, *cred, url)
        assert r.stdout == b"407", r.stdout
    r = curl("--socks5", "127.0.0.1:%d" % p, "--proxy-user", "user:wrong", url)
    assert r.returncode != 0 and not r.stdout
    r = curl("--socks5", "127.0.0.1:%d" % p, url)
    assert r.returncode != 0 and not r.stdout
    s = connect(p)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\xff"
    s.close()
    try:
        socks5_open(p, b"user", b"pa:sx")
        raise AssertionError("wrong socks5 password accepted")
    except AssertionError as e:
        assert "auth reply b'\\x01\\x01'" in str(e), e
    d.wait_log(r"407: wrong credentials")
    d.wait_log(r"407: no credentials")
    d.wait_log(r"socks5: wrong username or password")
    d.wait_log(r"socks5: the client offers no username/password")
    time.sleep(0.3)
    assert o.accepted == 3, "a refused user reached the origin (%d)" % o.accepted


# ---- flag ----

@test(timeout=60)
def flag_disables_protocols(ctx):
    """flag = socks5 refuses HTTP proxying and CONNECT, flag = http https
    refuses SOCKS5: the user gets an answer or a closed connection, the
    daemon a log line, the origin nothing."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx, flag="socks5")
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % o.port)
    assert r.stdout in (b"403", b"000"), r.stdout
    r = curl("-p", "-o", "/dev/null", "-x", "http://127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % o.port)
    assert r.returncode != 0
    d.wait_log(r"(not allowed by flag|flag does not allow)")
    r = curl("--socks5", "127.0.0.1:%d" % p, "http://127.0.0.1:%d/" % o.port)
    assert r.stdout == b"hello from A /\n", r.stderr
    d.stop()
    d2, p2 = proxy_server(ctx, flag="http https")
    r = curl("--socks5", "127.0.0.1:%d" % p2, "http://127.0.0.1:%d/" % o.port)
    assert r.returncode != 0 and not r.stdout
    d2.wait_log(r"(not allowed by flag|flag does not allow)")
    assert o.accepted == 1, o.accepted


# ---- stopping ----

@test(timeout=60)
def quit_drains_proxy_sessions(ctx):
    """QUIT: an idle keep-alive user is closed at once, a CONNECT in use
    keeps working until its user ends it, then the daemon exits 0."""
    echo = TcpServer(ctx, echo_handler)
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx, "shutdown_timeout = 20s\n")
    busy = connect(p)
    busy.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % echo.port)
    f = busy.makefile("rb")
    assert read_head(f)[0].startswith(b"HTTP/1.1 200 ")
    idle = connect(p)
    idle.sendall(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % o.port)
    fi = idle.makefile("rb")
    lines = read_head(fi)
    assert read_body(fi, parse_fields(lines)) == b"hello from A /\n"
    d.signal(signal.SIGQUIT)
    d.wait_log(r"stopping gracefully")
    wait_closed(idle, 5)
    busy.sendall(b"still here")
    assert f.read1(100) == b"still here"
    time.sleep(0.5)
    assert d.proc.poll() is None, "exited with a CONNECT in use"
    busy.shutdown(socket.SHUT_WR)
    assert f.read() == b""
    busy.close()
    assert d.proc.wait(5) == 0
    d.wait_log(r"drained, stopping")


# ---- the resolver ----

@test(timeout=90)
def dead_resolver_stalls_nobody_else(ctx):
    """The daemon's resolv.conf names a DNS server that never answers (a
    private mount namespace): a CONNECT to a name waits and gets 504 after
    connect_timeout, while a CONNECT and a GET to literal addresses go
    through at once."""
    rc = ctx.write("resolv.conf", "nameserver 127.83.84.85\noptions timeout:20 attempts:1\n")
    probe = run(["unshare", "-m", "sh", "-c", "mount --bind %s /etc/resolv.conf" % rc])
    if probe.returncode != 0:
        raise Skip("no private mount namespace (unshare -m): %s" % probe.stderr.decode().strip())
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sink.bind(("127.83.84.85", 53))
    except OSError as e:
        raise Skip("cannot bind the silent DNS server: %s" % e)
    def drop():
        try:
            while sink.recvfrom(4096)[1] is not None:
                pass
        except OSError:
            pass
    serve_in_thread(ctx, sink, drop)
    wrapper = ctx.write("wrap.sh", "#!/bin/sh\nexec unshare -m sh -c 'mount --bind \"$0\" /etc/resolv.conf "
                                   "&& exec \"$@\"' %s %s \"$@\"\n" % (rc, WMPROXYD))
    os.chmod(wrapper, 0o755)
    o = Origin(ctx, "A")
    port = free_port()
    d = Daemon(ctx, "server", server_ini(port, "flag = 7\nconnect_timeout = 3s\nlog_level = debug\n", tls=False),
               binary=wrapper).start()
    d.wait_log(r"listening for tunnels")
    hung = []

    def slow():
        t0 = time.monotonic()
        r = curl("-p", "-o", "/dev/null", "-w", "%{http_connect}", "-x", "http://127.0.0.1:%d" % port,
                 "http://hang.wmproxy.test/")
        hung.append((r.stdout, time.monotonic() - t0))
    threads = [threading.Thread(target=slow, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    d.wait_log(r"CONNECT hang\.wmproxy\.test:80", count=6)
    t0 = time.monotonic()
    r = curl("-p", "-x", "http://127.0.0.1:%d" % port, "http://127.0.0.1:%d/" % o.port)
    r2 = curl("-x", "http://127.0.0.1:%d" % port, "http://127.0.0.1:%d/get" % o.port)
    took = time.monotonic() - t0
    assert r.stdout == b"hello from A /\n", r.stderr
    assert r2.stdout == b"hello from A /get\n", r2.stderr
    assert took < 2, "literal targets took %.1fs behind a dead resolver" % took
    for t in threads:
        t.join(15)
    assert len(hung) == 6 and all(code == b"504" and 2.5 < t < 8 for code, t in hung), hung
    d.wait_log(r"resolve hang\.wmproxy\.test:80: timed out")


# ---- through the tunnel ----

@test(timeout=90)
def client_bind_addr_through_tls_tunnel(ctx):
    """A user of the client's bind_addr reaches an origin through the
    server (which makes the outbound connection) over a TLS tunnel: HTTP
    proxy, CONNECT and SOCKS5."""
    o = Origin(ctx, "A")
    lp = free_port()
    s, c, _ = start_pair(ctx, "", server_extra="flag = 7\naccess_log = %s\n" % ctx.path("access.log"),
                         client_extra="bind_addr = 127.0.0.1:%d\n" % lp, tls=True)
    c.wait_log(r"listening for proxy users")
    px = "http://127.0.0.1:%d" % lp
    r = curl("-x", px, "http://127.0.0.1:%d/" % o.port, "http://127.0.0.1:%d/2" % o.port)
    assert r.stdout == b"hello from A /\nhello from A /2\n", r.stderr
    r = curl("-p", "-x", px, "http://127.0.0.1:%d/c" % o.port)
    assert r.stdout == b"hello from A /c\n", r.stderr
    r = curl("--socks5-hostname", "127.0.0.1:%d" % lp, "http://127.0.0.1:%d/s" % o.port)
    assert r.stdout == b"hello from A /s\n", r.stderr
    # the user's address field is the tunnel's, as one field (806d7e8): "client:ADDR"
    wait_until(lambda: len([l for l in access_lines(ctx) if re.search(r"^\S+ client:\S+ proxy ", l)]) >= 4, 10,
               "the server's access lines for the tunnel's users")
    assert all(len(l.split(" ")) == 9 for l in access_lines(ctx)), access_lines(ctx)


@test(timeout=90)
def proxy_mapping_into_private_network(ctx):
    """map_proxy_bind on the server reaches an origin through the client's
    proxy mapping (the client connects); its credentials and flag apply."""
    o = Origin(ctx, "A")
    mp = free_port()
    mapping = ("[mapping p]\nmode = proxy\nflag = http socks5\nusername = u\npassword = p:w\n")
    s, c, _ = start_pair(ctx, mapping, server_extra="map_proxy_bind = 127.0.0.1:%d\n" % mp,
                         client_extra="log_level = debug\n")
    px = "http://127.0.0.1:%d" % mp
    r = curl("-U", "u:p:w", "-x", px, "http://127.0.0.1:%d/" % o.port)
    assert r.stdout == b"hello from A /\n", r.stderr
    r = curl("--socks5", "127.0.0.1:%d" % mp, "--proxy-user", "u:p:w", "http://127.0.0.1:%d/s" % o.port)
    assert r.stdout == b"hello from A /s\n", r.stderr
    assert o.accepted == 2
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-U", "u:bad", "-x", px, "http://127.0.0.1:%d/" % o.port)
    assert r.stdout == b"407", r.stdout
    r = curl("-p", "-o", "/dev/null", "-w", "%{http_connect}", "-U", "u:p:w", "-x", px,
             "http://127.0.0.1:%d/" % o.port)
    assert r.stdout == b"403", r.stdout     # https (CONNECT) is not in the mapping's flag
    c.wait_log(r"403: CONNECT is not allowed by flag")
    # the client logs the public user's own address, carried in the OPEN
    c.wait_log(r"proxy 127\.0\.0\.1:\d+: GET http://127\.0\.0\.1:%d/" % o.port)
    assert o.accepted == 2, o.accepted


@test(timeout=60)
def proxy_and_tcp_bind_share_a_port_number(ctx):
    """map_tcp_bind and map_proxy_bind on the same port of two addresses
    (a valid file): each listener serves its own mapping. Before, owners
    were kept by port number alone: the proxy mapping was rejected as held
    by the tcp one, and users of the proxy address were carried to the tcp
    mapping's private service."""
    o = Origin(ctx, "A")
    svc = TcpServer(ctx, lambda conn: conn.sendall(b"the tcp service\n"))
    while True:
        p = free_port()
        k = socket.socket()
        try:
            k.bind(("127.0.0.2", p))
            break
        except OSError:
            pass
        finally:
            k.close()
    mappings = ("[mapping t]\nmode = tcp\nlocal_addr = 127.0.0.1:%d\n"
                "[mapping px]\nmode = proxy\nflag = http\nusername = u\npassword = p\n" % svc.port)
    s, c, _ = start_pair(ctx, mappings, server_extra="map_tcp_bind = 127.0.0.1:%d\nmap_proxy_bind = 127.0.0.2:%d\n"
                         % (p, p))
    assert "mapping rejected" not in c.text(), c.text()
    r = curl("-U", "u:p", "-x", "http://127.0.0.2:%d" % p, "http://127.0.0.1:%d/" % o.port)
    assert r.stdout == b"hello from A /\n", (r.stdout, r.stderr)
    k = connect(p)
    assert k.recv(100) == b"the tcp service\n"
    k.close()
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=120)
def socks5_lookups_are_bounded(ctx):
    """Names looked up for SOCKS5 users, against a DNS server that never
    answers (the daemon in a mount namespace of its own, with a resolv.conf
    naming it): at most 256 names wait for the 16 lookup threads, beyond
    that a user is answered at once (reply 4, "resolver busy" logged); a
    user who leaves takes his name out of the queue. Before, every request
    waited in an unbounded queue even after its user left (20,000 of them
    held 100 MB), and a name in /etc/hosts waited behind all of them."""
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dns.bind(("127.83.84.85", 53))
    except OSError as e:
        raise Skip("cannot bind the silent DNS server: %s" % e)
    ctx.closers.append(dns.close)
    wrap = mount_ns_binary(ctx, {"/etc/resolv.conf": "nameserver 127.83.84.85\noptions timeout:3 attempts:1\n"})
    port = free_port()
    s = Daemon(ctx, "server", server_ini(port, "flag = socks5\nconnect_timeout = 60s\nlog_level = debug\n",
                                         tls=False), binary=wrap).start()
    s.wait_log(r"listening for tunnels")
    e = TcpServer(ctx, echo_handler)

    def ask(name):
        c = socks5_open(port)
        c.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", e.port))
        return c

    def leave(c):                       # a reset: the server cannot take it for a half-close
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()

    def resets(n):
        s.wait_log(r"proxy [\d.:]+: user: Connection reset", count=n, timeout=20)

    hang = [ask(b"hang%d.wmproxy.test" % i) for i in range(16)]     # the threads, for 3 s
    for i in range(300):                # users who leave: out of the queue
        leave(ask(b"gone%d.wmproxy.test" % i))
    resets(300)
    wait = [ask(b"wait%d.wmproxy.test" % i) for i in range(300)]    # 256 wait, 44 are answered
    s.wait_log(r"resolver busy", count=44, timeout=10)
    for c in wait[256:]:
        c.settimeout(5)
        r = socks5_reply(c)
        assert r[1] == 4, r
    for c in hang + wait[:256]:
        c.setblocking(False)
        try:
            d = c.recv(16)
            raise AssertionError("a waiting user was answered: %r" % d)
        except BlockingIOError:
            pass
    assert len(re.findall(r"resolver busy", s.text())) == 44, s.text()[-2000:]
    for c in hang + wait:
        leave(c)
    resets(300 + 16 + 300)
    # the lookups running end within 3 s; nothing else is queued any more,
    # so a name from /etc/hosts is answered right after them
    t0 = time.monotonic()
    c = socks5_open(port)
    c.settimeout(20)
    r = socks5_request(c, 1, 3, bytes([9]) + b"localhost", e.port)
    assert r[1] == 0, "localhost: reply %d after %.1fs" % (r[1], time.monotonic() - t0)
    assert time.monotonic() - t0 < 10, time.monotonic() - t0
    c.sendall(b"ping")
    assert c.recv(4) == b"ping"
    c.close()


@test(timeout=60)
def http_proxy_pipelined_then_half_closed(ctx):
    """Three requests pipelined, then the user's FIN: all three are
    answered, the last with Connection: close, then the connection ends
    (the second and third were dropped unanswered, after a keep-alive
    promise)."""
    o = Origin(ctx, "A")
    d, p = proxy_server(ctx)
    c = connect(p)
    q = "GET http://127.0.0.1:%d/%%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (o.port, o.port)
    c.sendall(("".join(q % n for n in ("one", "two", "three"))).encode())
    c.shutdown(socket.SHUT_WR)
    c.settimeout(20)
    f = c.makefile("rb")
    for n in ("one", "two", "three"):
        lines = read_head(f)
        assert lines, "no answer to /%s" % n
        st, h = int(lines[0].split()[1]), parse_fields(lines)
        assert st == 200, (n, st)
        body = read_body(f, h)
        assert body == b"hello from A /%s\n" % n.encode(), body
        assert h.get("connection") == ("close" if n == "three" else "keep-alive"), (n, h)
    assert f.read() == b"", "more after the last answer"
    c.close()


@test(timeout=120)
def http_proxy_user_stall_closes(ctx):
    """A user who stops sending the body it announced is closed after 60 s
    of silence, with a log line (nothing closed it before); one that keeps
    sending slowly is not."""
    def patient(c):                 # an origin that waits as long as it takes
        c.settimeout(120)
        f = c.makefile("rb")
        lines = read_head(f)
        if not lines:
            return
        try:
            body = read_body(f, parse_fields(lines))
        except AssertionError:
            return                  # the stalled user's request, cut by the proxy
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" + hashlib.sha256(body).hexdigest().encode())
    o = TcpServer(ctx, patient)
    d, p = proxy_server(ctx)
    head = ("POST http://127.0.0.1:%d/sha HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 1000\r\n\r\n" %
            (o.port, o.port)).encode()
    stuck = connect(p)
    stuck.sendall(head + b"0123456789")
    slow = connect(p)
    slow.sendall(head)
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < 50:          # a byte every 10 s, and the rest at the end
        slow.sendall(b"x" * 10)
        sent += 10
        time.sleep(10)
    slow.sendall(b"x" * (1000 - sent))
    stuck.settimeout(30)
    assert stuck.recv(100) == b"", "the stalled user got an answer"
    took = time.monotonic() - t0
    assert 55 < took < 80, took
    d.wait_log(r"no progress with the user for 60s, closing")
    slow.settimeout(10)
    f = slow.makefile("rb")
    lines = read_head(f)
    assert lines and int(lines[0].split()[1]) == 200, lines
    assert read_body(f, parse_fields(lines)) == hashlib.sha256(b"x" * 1000).hexdigest().encode()
    slow.close()


@test(timeout=60)
def socks5_udp_only_the_user_and_its_peers(ctx):
    """UDP ASSOCIATE naming another address than the user's own: datagrams
    from that address are dropped, the user's own go through (RFC 1928 7;
    they went the other way round). A host the user never sent to gets
    nothing to the user through the relay; the one it sent to does. A name
    whose first address is IPv6 reaches its IPv4 one on an IPv4
    association (it was lost: sendto EAFNOSUPPORT)."""
    echo = udp_echo(ctx)
    wrap = mount_ns_binary(ctx, {"/etc/hosts": "127.0.0.1 localhost\n::1 dual.test\n127.0.0.1 dual.test\n"})
    port = free_port()
    d = Daemon(ctx, "server", server_ini(port, "flag = socks5\nlog_level = debug\n", tls=False),
               binary=wrap).start()
    d.wait_log(r"listening for tunnels")

    def udp(host):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((host, 0))
        u.settimeout(2)
        ctx.closers.append(u.close)
        return u

    def nothing(u):
        try:
            got = u.recvfrom(65536)
        except socket.timeout:
            return True
        raise AssertionError("got %r" % (got,))

    s = socks5_open(port)
    r = socks5_request(s, 3, 1, socket.inet_aton("127.0.0.2"), 0)
    assert r[1] == 0 and r[3] == 1, r
    relay = (socket.inet_ntoa(r[4:8]), struct.unpack(">H", r[8:10])[0])
    other, user, stranger = udp("127.0.0.2"), udp("127.0.0.1"), udp("127.0.0.3")
    hdr = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo)
    other.sendto(hdr + b"from .2", relay)
    assert nothing(other)
    user.sendto(hdr + b"from the user", relay)
    assert user.recvfrom(65536)[0] == hdr + b"from the user"
    stranger.sendto(b"never asked for", relay)
    assert nothing(user)
    name = b"dual.test"
    user.sendto(b"\x00\x00\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", echo) + b"by name", relay)
    assert user.recvfrom(65536)[0] == hdr + b"by name"
    s.close()


@test(timeout=30)
def proxy_handshake_timeout_counts_from_accept(ctx):
    """handshake_timeout runs from the accept on bind_addr, through the
    sniffing of the first bytes and the proxy request after it (the clock
    started again after the sniff: a slow user had up to twice as long)."""
    d, p = proxy_server(ctx, "handshake_timeout = 2s\n")
    c = connect(p)
    c.settimeout(10)
    t0 = time.monotonic()
    c.sendall(b"G")
    time.sleep(1.5)
    c.sendall(b"ET http://127.0.0.1/ HTTP/1.1\r\n")     # the head is never finished
    d.wait_log(r"no complete proxy request within handshake_timeout")
    assert c.recv(100) in (b"", ), "an answer to an incomplete head"
    took = time.monotonic() - t0
    assert 1.8 < took < 3.0, took


@test(timeout=60)
def access_lines_say_what_happened(ctx):
    """Access lines as an operator reads them (wmproxyd(8)): a connection
    to a port no client serves is a 'refused' line (there was none); the
    proxy mapping's users are 'proxy' lines (they said tcp); a request
    refused with 400 after a good one on the same connection carries none
    of the good one's fields (it had its mapping, bytes and duration); a
    forward-proxy user's bytes are the bytes it sent (they were those
    written to the target: 0 for a 407); bytes a user chose never add or
    shift fields (a '"' in a target, spaces in a SOCKS5 host name)."""
    o = Origin(ctx, "A")
    web = TcpServer(ctx, echo_handler)
    idle, hp, pp = free_port(), free_port(), free_port()
    maps = ("[mapping web]\nmode = http\nlocal_addr = 127.0.0.1:%d\ndomain = a.test\n" % o.port +
            "[mapping px]\nmode = proxy\nusername = u\npassword = p\n")
    s, c, tport = start_pair(ctx, maps, tls=False, server_extra=(
        "access_log = %s\nflag = 7\nusername = u\npassword = p\nmap_tcp_bind = 127.0.0.1:%d\n"
        "map_http_bind = 127.0.0.1:%d\nmap_proxy_bind = 127.0.0.1:%d\n" % (ctx.path("access.log"), idle, hp, pp)))

    def lines_with(rx, n=1):
        return wait_until(lambda: [l for l in access_lines(ctx) if re.search(rx, l)][:n]
                          if len([l for l in access_lines(ctx) if re.search(rx, l)]) >= n else None,
                          10, "access lines /%s/" % rx)

    def fields(l):
        return l.split(" ")

    # a port no client serves
    x = connect(idle)
    x.settimeout(5)
    assert x.recv(10) == b""
    l, = lines_with(r" tcp - refused ")
    assert re.match(r"\S+ 127\.0\.0\.1:\d+ tcp - refused 0 0 0ms$", l), l

    # the proxy mapping: a 407 from the client's proxy, logged on the server as proxy
    req = b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % o.port
    x = connect(pp)
    x.sendall(req)
    assert recv_head_status(x) == 407
    x.close()
    l, = lines_with(r" proxy px ")
    assert re.match(r"\S+ 127\.0\.0\.1:\d+ proxy px - %d \d+ \d+ms$" % len(req), l), l

    # 400 after a good request on one connection
    x = connect(hp)
    x.sendall(b"GET /good HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert recv_head_status(x) == 200
    time.sleep(0.3)
    bad = b"GET /bad HTTP/1.1\r\nHost: a.test\r\nBad Header\r\n\r\n"
    x.sendall(bad)
    assert recv_head_status(x) == 400
    x.close()
    l, = lines_with(r' http - "-" 400 ')
    f = fields(l)
    assert f[6] == str(len(bad)) and f[8] in ("0ms", "1ms"), l

    # the forward proxy on bind_addr: a 407 counts the bytes the user sent
    x = connect(tport)
    x.sendall(req)
    assert recv_head_status(x) == 407
    x.close()
    l, = lines_with(r" proxy GET http://127\.0\.0\.1:%d/ 407 " % o.port)
    assert fields(l)[6] == str(len(req)), l

    # bytes the user chose
    x = connect(hp)
    x.sendall(b'GET /a"b"c HTTP/1.1\r\nHost: a.test\r\n\r\n')
    recv_head_status(x)
    x.close()
    l, = lines_with(r' http web "GET /a')
    assert '"GET /a\\x22b\\x22c"' in l and len(fields(l)) == 10, l    # one space in the request line
    x = socks5_open(tport, b"u", b"p")
    name = b"evil host 0 0 0ms"
    x.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", 80))
    socks5_reply(x)
    x.close()
    l, = lines_with(r" proxy socks5 ")
    assert "evil\\x20host\\x200\\x200\\x200ms:80" in l and len(fields(l)) == 9, l


def recv_head_status(sock):
    """The status code of the HTTP answer head on sock (read up to its end)."""
    sock.settimeout(10)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(4096)
        assert d, "closed after %r" % buf
        buf += d
    return int(buf.split(b" ", 2)[1])


@test(timeout=60)
def socks5_udp_ipv6_association_picks_ipv6(ctx):
    """An association on an IPv6 bind_addr ([::1]) is bound there and
    sends to a name's IPv6 address, whichever family the resolver puts
    first (the IPv4 one cannot be reached from ::1). The dual-stack case
    (an IPv4 user on ':port', an association bound to ::ffff:a.b.c.d that
    reaches IPv4 only) needs a listener on all addresses, which tests do
    not open."""
    if not have_ipv6():
        raise Skip("no IPv6 loopback")
    e = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    e.bind(("::1", 0))
    ctx.closers.append(e.close)
    ep = e.getsockname()[1]
    wrap = mount_ns_binary(ctx, {"/etc/hosts": "127.0.0.1 localhost\n127.0.0.1 dual.test\n::1 dual.test\n"})
    port = free_port()
    d = Daemon(ctx, "server", "[server]\nbind_addr = [::1]:%d\nflag = socks5\nlog_level = debug\n" % port,
               binary=wrap).start()
    d.wait_log(r"listening for tunnels")
    s = socks5_open(port, host="::1")
    r = socks5_request(s, 3, 4, socket.inet_pton(socket.AF_INET6, "::1"), 0)
    assert r[1] == 0 and r[3] == 4, r
    relay = (socket.inet_ntop(socket.AF_INET6, r[4:20]), struct.unpack(">H", r[20:22])[0])
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::1", 0))
    u.settimeout(3)
    ctx.closers.append(u.close)
    name = b"dual.test"
    u.sendto(b"\x00\x00\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", ep) + b"over ipv6", relay)
    e.settimeout(3)
    got, src = e.recvfrom(100)
    assert got == b"over ipv6", got
    s.close()
