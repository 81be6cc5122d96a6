"""Network namespaces for the fault tests: two namespaces joined by a veth
pair (or, where the kernel has no netem, by a TUN link whose packets a
thread of this process drops and delays), daemons started inside them with
`ip netns exec`, and sockets made inside them from this process.

Everything a helper creates is removed by a closer registered on the test's
Ctx, so a failing test leaves no namespace, link or qdisc behind. Only the
addresses 10.200.X.1/2 inside namespaces made here are ever used. Names
carry this process's pid, so concurrent runs do not collide."""
import ctypes
import errno
import fcntl
import heapq
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time

import lib

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_seq = [0]


def _ip(*args, check=True):
    r = subprocess.run(("ip",) + args, capture_output=True, timeout=10)
    if check and r.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(args), r.stderr.decode().strip()))
    return r


def _tc(ns, *args):
    return subprocess.run(("ip", "netns", "exec", ns, "tc") + args, capture_output=True, timeout=10)


def _name(kind):
    _seq[0] += 1
    return "wx%s%d%d" % (kind, os.getpid() % 100000, _seq[0])   # <= 15 chars (IFNAMSIZ)


_usable = None


def require():
    """Raise lib.Skip with the reason when namespaces cannot be made here
    (not root, no `ip`, no permission)."""
    global _usable
    if _usable is None:
        if os.geteuid() != 0:
            _usable = "network namespaces need root (euid %d)" % os.geteuid()
        else:
            n = _name("t")
            try:
                r = subprocess.run(["ip", "netns", "add", n], capture_output=True, timeout=10)
                _usable = "" if r.returncode == 0 else "ip netns add failed: %s" % r.stderr.decode().strip()
            except (OSError, subprocess.SubprocessError) as e:
                _usable = "ip netns add failed: %s" % e
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=10)
    if _usable:
        raise lib.Skip(_usable)


class Netns:
    """A network namespace with loopback up, deleted at the end of the test
    (the kernel then destroys its links, addresses and qdiscs)."""

    def __init__(self, ctx):
        require()
        self.name = _name("n")
        _ip("netns", "add", self.name)
        ctx.closers.append(self.delete)
        _ip("-n", self.name, "link", "set", "lo", "up")

    def delete(self):
        _ip("netns", "del", self.name, check=False)

    def run(self, *cmd, timeout=10):
        return subprocess.run(("ip", "netns", "exec", self.name) + cmd, capture_output=True, timeout=timeout)

    def in_ns(self, fn):
        """Run fn() in a thread that joined this namespace; return its
        result. Sockets made by fn belong to the namespace for good."""
        out = {}

        def body():
            fd = os.open("/var/run/netns/" + self.name, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns %s: %s" % (self.name, os.strerror(e)))
                out["v"] = fn()
            except BaseException as ex:  # noqa: BLE001 - re-raised in the caller
                out["e"] = ex
            finally:
                os.close(fd)
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join(30)
        if "e" in out:
            raise out["e"]
        return out["v"]

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM):
        return self.in_ns(lambda: socket.socket(family, type))

    def connect(self, addr, timeout=10):
        s = self.socket()
        s.settimeout(timeout)
        try:
            s.connect(addr)
        except BaseException:
            s.close()
            raise
        return s

    def addrs(self, dev):
        r = _ip("-n", self.name, "-o", "-4", "addr", "show", "dev", dev)
        return [l.split()[3].split("/")[0] for l in r.stdout.decode().splitlines()]


class Veth:
    """A veth pair: end a (address 10.200.N.1) in namespace na, end b
    (10.200.N.2) in nb."""

    def __init__(self, ctx, na, nb, subnet):
        self.na, self.nb = na, nb
        self.a, self.b = _name("a"), _name("b")
        self.ip_a, self.ip_b = "10.200.%d.1" % subnet, "10.200.%d.2" % subnet
        self.subnet = subnet
        _ip("link", "add", self.a, "netns", na.name, "type", "veth", "peer", "name", self.b, "netns", nb.name)
        # deleting one end deletes both; the namespaces' deletion would too
        ctx.closers.append(lambda: _ip("-n", na.name, "link", "del", self.a, check=False))
        _ip("-n", na.name, "addr", "add", self.ip_a + "/24", "dev", self.a)
        _ip("-n", nb.name, "addr", "add", self.ip_b + "/24", "dev", self.b)
        _ip("-n", na.name, "link", "set", self.a, "up")
        _ip("-n", nb.name, "link", "set", self.b, "up")
        self.blocked = False

    def block(self):
        """Drop every packet both ways, silently (no FIN, no RST, no ICMP):
        a zero-length FIFO as root qdisc on both ends (netem 100% loss
        where a fifo cannot be zero-length)."""
        for ns, dev in ((self.na, self.a), (self.nb, self.b)):
            r = _tc(ns.name, "qdisc", "replace", "dev", dev, "root", "pfifo", "limit", "0")
            if r.returncode != 0:
                r = _tc(ns.name, "qdisc", "replace", "dev", dev, "root", "netem", "loss", "100%")
            assert r.returncode == 0, "tc on %s: %s" % (dev, r.stderr.decode())
        self.blocked = True

    def unblock(self):
        for ns, dev in ((self.na, self.a), (self.nb, self.b)):
            _tc(ns.name, "qdisc", "del", "dev", dev, "root")
        self.blocked = False

    def netem(self, spec):
        """netem with spec (e.g. ["loss", "1%", "delay", "25ms"]) on both
        ends. Returns False when this kernel has no netem."""
        for ns, dev in ((self.na, self.a), (self.nb, self.b)):
            r = _tc(ns.name, "qdisc", "replace", "dev", dev, "root", "netem", *spec)
            if r.returncode != 0:
                return False
        return True


TUNSETIFF = 0x400454ca
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


class LossyLink:
    """A point-to-point link between namespaces na (10.200.N.1) and nb
    (10.200.N.2) made of two TUN devices; a thread here forwards each IP
    packet to the other side after delay_ms, dropping a fraction loss of
    them (seeded: runs repeat). What netem does, for kernels without it;
    both directions are impaired alike. With rate_mbit each direction is
    also a link of that rate: a packet leaves when the ones before it have
    (its length at that rate), then takes delay_ms; at most limit packets'
    worth of backlog (1,500 bytes each) wait, the rest are dropped at the
    tail, as netem's "rate" and "limit" do."""

    def __init__(self, ctx, na, nb, subnet, loss=0.0, delay_ms=0, seed=1, rate_mbit=0, limit=1000):
        self.ip_a, self.ip_b = "10.200.%d.1" % subnet, "10.200.%d.2" % subnet
        self.a, self.b = _name("u"), _name("v")
        self.fa = self.fb = None
        self.stop = False
        self.thread = None
        ctx.closers.append(self.close)
        try:
            self.fa = _tun(self.a)
        except OSError as e:
            raise lib.Skip("this kernel has no netem, and a TUN device cannot be made either: %s" % e)
        self.fb = _tun(self.b)
        self.loss, self.delay = loss, delay_ms / 1000.0
        self.rate = rate_mbit * 1e6 / 8          # bytes a second, 0: unlimited
        self.limit = limit * 1500
        self.rng = random.Random(seed)
        self.stats = {"fwd": 0, "dropped": 0, "overflow": 0}
        for ns, dev, me, peer in ((na, self.a, self.ip_a, self.ip_b), (nb, self.b, self.ip_b, self.ip_a)):
            _ip("link", "set", dev, "netns", ns.name)
            _ip("-n", ns.name, "addr", "add", me, "peer", peer, "dev", dev)
            _ip("-n", ns.name, "link", "set", dev, "mtu", "1500", "up")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        q = []     # (due, seq, fd to write, packet)
        seq = 0
        other = {self.fa: self.fb, self.fb: self.fa}
        free_at = {self.fa: 0.0, self.fb: 0.0}    # when each direction's link is idle again
        while not self.stop:
            now = time.monotonic()
            while q and q[0][0] <= now:
                _, _, fd, pkt = heapq.heappop(q)
                try:
                    os.write(fd, pkt)
                except OSError:
                    pass
            wait = max(0.0, q[0][0] - now) if q else 0.2
            try:
                rd, _, _ = select.select([self.fa, self.fb], [], [], min(wait, 0.2))
            except (OSError, ValueError):
                return
            for fd in rd:
                for _ in range(64):
                    try:
                        pkt = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno in (errno.EBADF, errno.EIO):
                            return
                        break
                    if self.loss and self.rng.random() < self.loss:
                        self.stats["dropped"] += 1
                        continue
                    t = time.monotonic()
                    if self.rate:
                        start = max(t, free_at[fd])
                        if (start - t) * self.rate > self.limit:
                            self.stats["overflow"] += 1
                            continue
                        free_at[fd] = t = start + len(pkt) / self.rate
                    self.stats["fwd"] += 1
                    seq += 1
                    heapq.heappush(q, (t + self.delay, seq, other[fd], pkt))

    def close(self):
        self.stop = True
        if self.thread:
            self.thread.join(5)
            if self.thread.is_alive():
                # its descriptors stay open: closed under a live thread,
                # their numbers could be reused by a later test's sockets
                print("    warning: the link's thread did not stop; its TUN devices are left open")
                return
        for fd in (self.fa, self.fb):
            if fd is None:
                continue
            try:
                os.close(fd)     # the last close destroys the TUN device
            except OSError:
                pass


class NsDaemon(lib.Daemon):
    """A lib.Daemon run inside a namespace. `ip netns exec` execs the daemon
    in place, so the pid it reports is the daemon's own (stopped by pid)."""

    def __init__(self, ctx, ns, name, ini, binary=None, args=(), nofile=None):
        super().__init__(ctx, name, ini, binary=binary, args=args)
        self.ns = ns
        self.nofile = nofile

    def start(self):
        self.logf = open(self.log, "ab")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        cmd = ["ip", "netns", "exec", self.ns.name, self.binary, "-f", self.conf] + self.args
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env)
        self.ctx.procs.append(self.proc)
        self.ctx.closers.append(self.stop)
        return self


def ns_tcp_server(ctx, ns, handler, host="127.0.0.1"):
    """lib.TcpServer listening inside namespace ns."""
    s = ns.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    return lib.TcpServer(ctx, handler, sock=s)
