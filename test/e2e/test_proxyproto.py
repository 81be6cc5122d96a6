"""PROXY protocol (proxy_protocol = v1|v2 on a tcp mapping) end to end: the
private service - haproxy with accept-proxy, and a raw parser of our own -
sees the public user's address and port and the address it connected to,
for IPv4 and IPv6 users, through map_tcp_bind and through remote_port."""
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import threading

from lib import (Skip, TcpServer, free_port, free_port_all, have_ipv6, recv_all, start_pair, tcp_mapping, test, wait_port, wait_until)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

V2_SIG = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"


class Haproxy:
    """haproxy in the foreground (-db) as the private service: one HTTP
    frontend per port with accept-proxy, answering every request with the
    client and frontend addresses it believes in ("%ci %cp %fi %fp"), and
    logging the same to its stdout."""

    def __init__(self, ctx, ports):
        if not os.path.exists(HAPROXY):
            raise Skip("haproxy is not installed (apt-get install haproxy)")
        fes = ""
        for i, p in enumerate(ports):
            fes += ("frontend fe%d\n"
                    "    bind 127.0.0.1:%d accept-proxy\n"
                    "    http-request return status 200 content-type text/plain lf-string \"%%ci %%cp %%fi %%fp\"\n"
                    % (i, p))
        self.cfg = ctx.write("haproxy.cfg", (
            "global\n"
            "    log stdout format raw local0\n"
            "defaults\n"
            "    mode http\n"
            "    log global\n"
            "    log-format \"seen client=%ci:%cp frontend=%fi:%fp\"\n"
            "    timeout connect 5s\n"
            "    timeout client 10s\n"
            "    timeout server 10s\n" + fes))
        self.log = ctx.path("haproxy.log")
        r = subprocess.run([HAPROXY, "-c", "-f", self.cfg], capture_output=True)
        assert r.returncode == 0, "haproxy -c: %s" % (r.stdout + r.stderr).decode()
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdout=self.logf, stderr=subprocess.STDOUT)
        ctx.procs.append(self.proc)
        ctx.closers.append(self.stop)
        for p in ports:
            wait_port(p)

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def norm(ip):
    """The canonical text of an address (IPv4-mapped IPv6 as plain IPv4)."""
    a = ipaddress.ip_address(ip.split("%")[0])
    if a.version == 6 and a.ipv4_mapped:
        a = a.ipv4_mapped
    return str(a)


def user_get(host, port):
    """One HTTP request as a public user from host (127.0.0.1 or ::1):
    returns ((our ip, our port), (ip, port) we connected to, body)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((host, 0))
    s.connect((host, port))
    me, there = s.getsockname()[:2], s.getpeername()[:2]
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    resp = recv_all(s)
    s.close()
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), resp[:300]
    return me, there, body.decode()


def check_haproxy_sees(hap, host, port, what):
    me, there, body = user_get(host, port)
    ci, cp, fi, fp = body.split()
    assert (norm(ci), int(cp)) == (norm(me[0]), me[1]), \
        "%s: haproxy saw client %s:%s, the user was %s:%d" % (what, ci, cp, me[0], me[1])
    assert (norm(fi), int(fp)) == (norm(there[0]), there[1]), \
        "%s: haproxy saw frontend %s:%s, the user connected to %s:%d" % (what, fi, fp, there[0], there[1])
    # and its log says the same
    line = "seen client=%s:%d frontend=%s:%d" % (ci, me[1], fi, there[1])
    wait_until(lambda: line in hap.text(), 10, "haproxy to log %r" % line)
    return ci


def haproxy_pair(ctx, server_extra, pp_ports=None):
    """haproxy on two ports; mapping pp1 (v1) takes map_tcp_bind, pp2 (v2)
    its remote_port. Returns (haproxy, public port of v1, of v2)."""
    h1, h2 = free_port(), free_port()
    hap = Haproxy(ctx, [h1, h2])
    # p2 is a remote_port: on all addresses unless map_tcp_bind names a host
    p1, p2 = pp_ports or (free_port_all(), free_port_all())
    maps = (tcp_mapping("pp1", h1, extra="proxy_protocol = v1\n") +
            tcp_mapping("pp2", h2, p2, extra="proxy_protocol = v2\n"))
    s, c, _ = start_pair(ctx, maps, server_extra=server_extra % {"p1": p1, "p2": p2})
    c.wait_log(r"mapping registered name=pp1", timeout=10)
    c.wait_log(r"mapping registered name=pp2", timeout=10)
    return hap, p1, p2


@test(timeout=60)
def haproxy_v1_v2_dual_stack(ctx):
    """Listeners on all addresses (map_tcp_bind = :P, remote_port without a
    host): an IPv4 user (127.0.0.1) and an IPv6 user (::1) each reach
    haproxy through v1 and v2, which reports their own address and port and
    the address they connected to; IPv4 over the dual-stack socket is
    plain TCP4, not an IPv4-mapped TCP6."""
    if not have_ipv6():
        raise Skip("no IPv6 loopback")
    hap, p1, p2 = haproxy_pair(ctx, "map_tcp_bind = :%(p1)d\nallow_ports = %(p2)d\n")
    for port, ver in ((p1, "v1"), (p2, "v2")):
        for host in ("127.0.0.1", "::1"):
            ci = check_haproxy_sees(hap, host, port, "%s from %s" % (ver, host))
            assert ci == host, "%s: haproxy saw %r, want %r" % (ver, ci, host)


@test(timeout=60)
def haproxy_v1_v2_ipv4_listener(ctx):
    """map_tcp_bind = 127.0.0.1:P: remote_port binds on 127.0.0.1 too; both
    versions carry 127.0.0.1 and the user's port."""
    hap, p1, p2 = haproxy_pair(ctx, "map_tcp_bind = 127.0.0.1:%(p1)d\nallow_ports = %(p2)d\n")
    for port, ver in ((p1, "v1"), (p2, "v2")):
        check_haproxy_sees(hap, "127.0.0.1", port, ver)


@test(timeout=60)
def haproxy_v1_v2_ipv6_listener(ctx):
    """map_tcp_bind = [::1]:P: an IPv6-only listener (and remote_port on
    ::1); haproxy sees ::1 and the user's port for v1 and v2."""
    if not have_ipv6():
        raise Skip("no IPv6 loopback")
    hap, p1, p2 = haproxy_pair(ctx, "map_tcp_bind = [::1]:%(p1)d\nallow_ports = %(p2)d\n")
    for port, ver in ((p1, "v1"), (p2, "v2")):
        ci = check_haproxy_sees(hap, "::1", port, ver)
        assert ci == "::1", ci


def read_pp_header(c):
    """Read exactly one PROXY header from c (never past it); return
    (version, text of the addresses)."""
    first = c.recv(1, socket.MSG_PEEK)
    if first == b"P":
        line = b""
        while not line.endswith(b"\r\n"):
            b = c.recv(1)
            assert b, "EOF inside the v1 header"
            line += b
            assert len(line) <= 107, line
        parts = line[:-2].decode().split(" ")
        assert parts[0] == "PROXY" and parts[1] in ("TCP4", "TCP6") and len(parts) == 6, line
        return 1, "%s %s %s %s" % (parts[2], parts[4], parts[3], parts[5])
    hdr = b""
    while len(hdr) < 16:
        d = c.recv(16 - len(hdr))
        assert d, "EOF inside the v2 header"
        hdr += d
    assert hdr[:12] == V2_SIG, hdr
    assert hdr[12] == 0x21, hdr[12]
    n = struct.unpack(">H", hdr[14:16])[0]
    body = b""
    while len(body) < n:
        d = c.recv(n - len(body))
        assert d
        body += d
    if hdr[13] == 0x11:
        assert n == 12
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sp, dp = struct.unpack(">HH", body[8:12])
    else:
        assert hdr[13] == 0x21 and n == 36, hdr
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sp, dp = struct.unpack(">HH", body[32:36])
    return 2, "%s %d %s %d" % (src, sp, dst, dp)


@test(timeout=60)
def header_before_any_data_server_speaks_first(ctx):
    """A service that speaks first: the header reaches it as soon as the
    client connects, before the user sent a byte; then bytes pass unchanged
    both ways after it (a 1 MiB echo)."""
    def svc(c):
        ver, addrs = read_pp_header(c)
        c.sendall(("v%d %s\n" % (ver, addrs)).encode())
        while True:
            d = c.recv(65536)
            if not d:
                c.shutdown(socket.SHUT_WR)
                return
            c.sendall(d)
    a, b = TcpServer(ctx, svc), TcpServer(ctx, svc)
    p1, p2 = free_port(), free_port_all()
    maps = (tcp_mapping("a", a.port, extra="proxy_protocol = v1\n") +
            tcp_mapping("b", b.port, p2, extra="proxy_protocol = v2\n"))
    start_pair(ctx, maps, server_extra="map_tcp_bind = 127.0.0.1:%d\nallow_ports = %d\n" % (p1, p2))
    payload = os.urandom(1 << 20)
    for port, ver in ((p1, 1), (p2, 2)):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        me = s.getsockname()
        line = b""
        while not line.endswith(b"\n"):
            d = s.recv(1)
            assert d, "closed before the service's greeting: %r" % line
            line += d
        want = "v%d 127.0.0.1 %d 127.0.0.1 %d\n" % (ver, me[1], port)
        assert line.decode() == want, (line, want)
        t = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)), daemon=True)
        t.start()
        got = recv_all(s)
        t.join(10)
        s.close()
        assert got == payload, "v%d: echo after the header: %d bytes of %d" % (ver, len(got), len(payload))


@test(timeout=30)
def no_header_without_proxy_protocol(ctx):
    """A tcp mapping without proxy_protocol sends nothing of its own."""
    first = {}

    def svc(c):
        c.settimeout(10)
        first["b"] = c.recv(5)
        c.sendall(b"ok")
    e = TcpServer(ctx, svc)
    pub = free_port()
    start_pair(ctx, tcp_mapping("plain", e.port), server_extra="map_tcp_bind = 127.0.0.1:%d\n" % pub)
    s = socket.create_connection(("127.0.0.1", pub), timeout=10)
    s.sendall(b"hello")
    assert recv_all(s) == b"ok"
    s.close()
    assert first["b"] == b"hello", first
    assert not re.match(rb"PROXY|\r\n\r\n", first["b"])
