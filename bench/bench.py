#!/usr/bin/env python3
"""bench/bench.py - the wmproxyd benchmark, run by scripts/bench (make bench).

Starts everything itself on 127.0.0.1 (random free ports, a temp dir),
measures wmproxyd and the baselines interleaved (run 1 of every variant,
then run 2, ...), prints medians, ratios to direct and the issue's targets
as PASS/FAIL, and writes every run to a CSV. Every process it starts is
stopped by PID at the end, also on Ctrl-C or SIGTERM.

Variants (tcp figures):
  direct    the load generator talks to the service itself
  wmp       wmproxyd server + client, plaintext tunnel, tcp mapping
  wmp-tls   the same with tc = true / ts = true (generated certificate, pinned)
  haproxy   haproxy mode tcp, nbthread 1 (wmproxyd is single-threaded)
  relay1    benchtool relay: the floor of a one-hop proxy (epoll, read() and write() of up to
            256 KiB, nothing else: no framing, no parsing, no timers)
  relay2    two benchtool relays in a row: the floor of any two-process tunnel (a public
            side and a private side), which is what wmproxyd's server and client are
            (both relays: throughput and HTTP figures only)
  nginx     nginx stream proxy_pass, master_process off (one process)
  socat     socat TCP-LISTEN,fork TCP:... (defaults: 8 KiB buffer, fork per connection)
  ssh       ssh -N -R, aes128-gcm@openssh.com, no session: OpenSSH 9.2's ssh sets TCP_NODELAY
            on its end of the transport, sshd does not on its end (checked with strace)
  ssh-nd    ssh -tt -R ... 'exec sleep N': a pty session, which makes sshd set TCP_NODELAY
            on its end too (IPQoS left at its default), aes128-gcm@openssh.com
Both ssh variants share one sshd; the forwarded sockets get TCP_NODELAY from ssh itself.

HTTP figure (wrk -t2 -c50, nginx serving a 1 KiB file as the origin): direct, nginx's http
reverse proxy, haproxy, relay1, relay2 and ssh-nd relaying the bytes to the origin (the
issue's table has haproxy and ssh), and wmp / wmp-tls through an http mapping; with each,
the CPU the proxy's processes spent per request (/proc/PID/stat over the wrk run). For HTTP
the relays are reference points, not floors: a mux can batch what they cannot.

With tput1, wmp-tls and relay2, every round also times AES-128-GCM on one core (openssl
speed): relay2's CPU plus encrypting and decrypting a GiB is the CPU floor of a two-process
TLS tunnel, printed under the targets.

Each one-stream run also records the CPU of the two iperf3 ends (the server's /proc/PID/stat,
the client's rusage) and the cores the machine kept busy. rate x (proxy + ends CPU s/GiB) is
the cores the pipeline keeps busy, at most all of them: under the targets, the most CPU per
GiB "1 stream >= k x a baseline" leaves the tunnel, beside what it spends.
"""
import argparse
import csv
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
WMPROXYD = os.environ.get("WMPROXYD", os.path.join(ROOT, "wmproxyd"))
TOOL = os.environ.get("BENCHTOOL", os.path.join(ROOT, "build", "bench", "benchtool"))
CLK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30

TCP_VARIANTS = ["direct", "wmp", "wmp-tls", "haproxy", "relay1", "relay2", "nginx", "socat", "ssh", "ssh-nd"]
THROUGHPUT_ONLY = ["relay1", "relay2"]   # floors for the byte rate; not tuned for latency
HTTP_VARIANTS = ["direct", "nginx", "haproxy", "relay1", "relay2", "ssh-nd", "wmp", "wmp-tls"]   # the table has haproxy and ssh
FIGURES = ["tput1", "tput8", "rr", "cps1", "cps50", "http", "mem", "size"]
GROUPS = {"tput": ["tput1", "tput8"], "cps": ["cps1", "cps50"], "throughput": ["tput1", "tput8"],
          "cpu": ["tput1"], "memory": ["mem"]}

# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)


def _pdeathsig():
    _libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG: die with the benchmark


class Procs:
    def __init__(self):
        self.items = []   # (name, Popen)

    def start(self, name, argv, log, stdin=subprocess.DEVNULL, stdout=None):
        f = open(log, "ab")
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout or f, stderr=f, preexec_fn=_pdeathsig)
        self.items.append((name, p))
        return p

    def stop(self, p, timeout=5):
        if p.poll() is not None:
            return
        kids = descendants(p.pid)
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        # children (sshd sessions, socat forks) get a moment to finish on their own
        end = time.monotonic() + 3
        while kids and time.monotonic() < end:
            kids = [k for k in kids if os.path.exists("/proc/%d" % k) and not _zombie(k)]
            time.sleep(0.05)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.stdin:
            p.stdin.close()
        if p.stdout:
            p.stdout.close()

    def stop_all(self):
        for _, p in reversed(self.items):
            try:
                self.stop(p)
            except Exception:
                pass
        self.items = []


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        return s[s.rindex(")") + 2] == "Z"
    except (OSError, ValueError):
        return True


def proc_table():
    """{pid: (ppid, ticks of utime+stime+cutime+cstime)} of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        out[int(d)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    return out


def descendants(pid, table=None):
    table = table or proc_table()
    kids, todo = [], [pid]
    while todo:
        q = todo.pop()
        for k, (pp, _) in table.items():
            if pp == q:
                kids.append(k)
                todo.append(k)
    return kids


def cpu_seconds(pids):
    """CPU (user + system) of the process trees rooted at pids, children
    that exited and were reaped included (cutime/cstime)."""
    t = proc_table()
    total = 0
    for p in pids:
        for q in [p] + descendants(p, t):
            if q in t:
                total += t[q][1]
    return total / CLK


def machine_busy():
    """(busy CPU seconds of all cores, wall seconds) now, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK, time.monotonic()


def status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def listening(port):
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            pass
    return False


def busy_conns(port):
    """Sockets of a connection to or from port that are not finished yet
    (LISTEN, TIME_WAIT and CLOSE excluded): a server still tearing down a test."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] in ("0A", "06", "07"):
                        continue
                    if int(parts[1].rsplit(":", 1)[1], 16) == port or int(parts[2].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            pass
    return n


def wait_for(cond, timeout, what, proc=None, log=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = "\n" + f.read()[-2000:]
    raise RuntimeError("timed out waiting for %s%s" % (what, tail))


_used_ports = set()


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _used_ports:
            _used_ports.add(port)
            return port


def run(argv, timeout):
    return subprocess.run(argv, capture_output=True, timeout=timeout, text=True)


# ---------------------------------------------------------------- the setup

class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="wmpbench.")
        self.procs = Procs()
        self.ports = {}      # variant -> {"iperf": port, "echo": port, "http": port}
        self.cpu_pids = {}   # variant -> [pid]
        self.http_pids = {}  # variant -> [pid] serving the HTTP figure, where not cpu_pids
        self.origin_port = None
        self.wmp = {}        # variant -> (server Popen, client Popen)
        self.results = []    # (figure, variant, run, value, unit, extra)
        self.mem = []        # (label, role, RssAnon kB, VmRSS kB)
        self.peak = {}       # (variant, role) -> peak RssAnon kB during throughput
        self.made_run_sshd = False
        self.argv_used = {}  # variant -> how it was started, for the report

    def path(self, *n):
        return os.path.join(self.tmp, *n)

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def log(self, msg):
        print("[bench %5.0fs] %s" % (time.monotonic() - T0, msg), flush=True)

    # ---- services behind everything
    def start_backends(self):
        p = self.procs.start("echo", [TOOL, "echo", "0"], self.path("echo.log"), stdout=subprocess.PIPE)
        line = p.stdout.readline().decode()
        self.echo_port = int(line.split()[1])
        _used_ports.add(self.echo_port)
        self.iperf_port = free_port()
        self.iperf_srv = self.procs.start("iperf3", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.iperf_port)],
                                          self.path("iperf3-s.log"))
        wait_for(lambda: listening(self.iperf_port), 10, "iperf3 -s")
        self.ports["direct"] = {"iperf": self.iperf_port, "echo": self.echo_port}
        self.cpu_pids["direct"] = []

    def start_origin(self):
        os.makedirs(self.path("www"), exist_ok=True)
        with open(self.path("www", "bench.html"), "w") as f:
            f.write("<html><body>" + "wmproxyd bench " * 64 + "</body></html>\n")   # ~1 KiB
        self.origin_port = free_port()
        self.origin = self.nginx("origin", "server { listen 127.0.0.1:%d; root %s; }" % (
            self.origin_port, self.path("www")), self.origin_port)
        self.ports["direct"]["http"] = self.origin_port

    def nginx(self, name, body, port, stream=False):
        d = self.path(name)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        if stream:
            block = "stream {\n%s\n}" % body
            head = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
        else:
            block = ("http {\n access_log off;\n default_type text/html;\n keepalive_requests 1000000;\n"
                     " client_body_temp_path %(d)s/tmp/body; proxy_temp_path %(d)s/tmp/proxy;\n"
                     " fastcgi_temp_path %(d)s/tmp/fcgi; uwsgi_temp_path %(d)s/tmp/uwsgi;"
                     " scgi_temp_path %(d)s/tmp/scgi;\n%(body)s\n}" % {"d": d, "body": body})
            head = ""
        conf = ("%sdaemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\n"
                "error_log %s/error.log warn;\npid %s/nginx.pid;\nevents { worker_connections 20000; }\n%s\n"
                % (head, d, d, block))
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        log = os.path.join(d, "error.log")
        p = self.procs.start(name, ["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e", log], log)
        wait_for(lambda: listening(port), 10, "nginx " + name, p, log)
        return p

    # ---- wmproxyd
    def wmp_pair(self, name, tls, mappings, server_extra="", client_extra=""):
        tport = free_port()
        srv_ini = "[server]\nbind_addr = 127.0.0.1:%d\nlog_file = %s\n%s%s" % (
            tport, self.path(name + "-server.log"), "tc = true\n" if tls else "", server_extra)
        slog = self.path(name + "-server.log")
        s = self.procs.start(name + "-server", [WMPROXYD, "-f", self.write(name + "-server.ini", srv_ini)],
                             self.path(name + "-server.out"))
        wait_for(lambda: listening(tport), 10, name + " server", s, slog)
        extra = ""
        if tls:
            rx = re.compile(r"tls on \S+:%d certificate sha256=([0-9A-F:]{95})" % tport)
            fp = []

            def seen():
                m = rx.search(open(slog).read())
                if m:
                    fp.append(m.group(1))
                return bool(m)
            wait_for(seen, 10, name + " certificate fingerprint", s, slog)
            extra = "ts = true\nfingerprint = %s\n" % fp[0]
        cli_ini = "[client]\nserver = 127.0.0.1:%d\nlog_file = %s\n%s%s\n%s" % (
            tport, self.path(name + "-client.log"), extra, client_extra, mappings)
        clog = self.path(name + "-client.log")
        c = self.procs.start(name + "-client", [WMPROXYD, "-f", self.write(name + "-client.ini", cli_ini)],
                             self.path(name + "-client.out"))
        n = mappings.count("[mapping ")
        wait_for(lambda: os.path.exists(clog) and len(re.findall("mapping registered", open(clog).read())) >= n,
                 15, name + " mappings", c, clog)
        return s, c

    def start_wmp(self, variant, tls):
        iport, eport, hport = free_port(), free_port(), free_port()
        maps = ("[mapping iperf]\nmode = tcp\nlocal_addr = 127.0.0.1:%d\nremote_port = %d\n\n"
                "[mapping echo]\nmode = tcp\nlocal_addr = 127.0.0.1:%d\n\n" % (self.iperf_port, iport, self.echo_port))
        sx = "map_tcp_bind = 127.0.0.1:%d\nallow_ports = %d\n" % (eport, iport)
        if "http" in self.need:
            maps += "[mapping web]\nmode = http\nlocal_addr = 127.0.0.1:%d\ndomain = bench.local\n" % self.origin_port
            sx += "map_http_bind = 127.0.0.1:%d\n" % hport
        s, c = self.wmp_pair(variant, tls, maps, sx)
        for p in (iport, eport):
            wait_for(lambda: listening(p), 10, variant + " listener %d" % p)
        self.ports[variant] = {"iperf": iport, "echo": eport, "http": hport}
        self.cpu_pids[variant] = [s.pid, c.pid]
        self.wmp[variant] = (s, c)

    # ---- baselines
    def start_haproxy(self):
        ip, ep = free_port(), free_port()
        cfg = ("global\n  nbthread 1\n  maxconn 9000\n\ndefaults\n  mode tcp\n  timeout connect 10s\n"
               "  timeout client 1h\n  timeout server 1h\n\n"
               "listen iperf\n  bind 127.0.0.1:%d\n  server s1 127.0.0.1:%d\n\n"
               "listen echo\n  bind 127.0.0.1:%d\n  server s1 127.0.0.1:%d\n" % (ip, self.iperf_port, ep, self.echo_port))
        self.ports["haproxy"] = {"iperf": ip, "echo": ep}
        if "http" in self.need:     # bytes relayed to the nginx origin, as in the table
            hp = free_port()
            cfg += "\nlisten web\n  bind 127.0.0.1:%d\n  server s1 127.0.0.1:%d\n" % (hp, self.origin_port)
            self.ports["haproxy"]["http"] = hp
        log = self.path("haproxy.log")
        p = self.procs.start("haproxy", ["haproxy", "-db", "-f", self.write("haproxy.cfg", cfg)], log)
        for q in self.ports["haproxy"].values():
            wait_for(lambda: listening(q), 10, "haproxy", p, log)
        self.argv_used["haproxy"] = "haproxy -db -f haproxy.cfg  (global nbthread 1; mode tcp; listen/bind/server)"
        self.cpu_pids["haproxy"] = [p.pid]

    def start_relays(self, variant, hops):
        ports, pids = {}, []
        targets = [("iperf", self.iperf_port), ("echo", self.echo_port)]
        if self.origin_port:
            targets.append(("http", self.origin_port))
        for what, target in targets:
            for _ in range(hops):
                p = self.procs.start(variant, [TOOL, "relay", "0", str(target)], self.path(variant + ".log"),
                                     stdout=subprocess.PIPE)
                target = int(p.stdout.readline().decode().split()[1])
                _used_ports.add(target)
                if what == "iperf":
                    pids.append(p.pid)
                elif what == "http":
                    self.http_pids.setdefault(variant, []).append(p.pid)
            ports[what] = target
        self.ports[variant] = ports
        self.cpu_pids[variant] = pids
        self.argv_used[variant] = " -> ".join(["benchtool relay PORT TARGET"] * hops)

    def start_nginx_stream(self):
        ip, ep = free_port(), free_port()
        body = ("server { listen 127.0.0.1:%d; proxy_pass 127.0.0.1:%d; }\n"
                "server { listen 127.0.0.1:%d; proxy_pass 127.0.0.1:%d; }" % (ip, self.iperf_port, ep, self.echo_port))
        p = self.nginx("nginx-stream", body, ep, stream=True)
        wait_for(lambda: listening(ip), 10, "nginx stream")
        self.ports.setdefault("nginx", {}).update({"iperf": ip, "echo": ep})
        self.argv_used["nginx"] = ("nginx -p DIR -c nginx.conf  (load_module ngx_stream_module.so; daemon off; "
                                   "master_process off; stream { server { listen; proxy_pass; } })")
        self.cpu_pids["nginx"] = [p.pid]

    def start_nginx_rproxy(self):
        port = free_port()
        body = ("upstream origin { server 127.0.0.1:%d; keepalive 64; }\n"
                "server { listen 127.0.0.1:%d; location / { proxy_pass http://origin; proxy_http_version 1.1;"
                " proxy_set_header Connection \"\"; } }" % (self.origin_port, port))
        p = self.nginx("nginx-rproxy", body, port)
        self.ports.setdefault("nginx", {})["http"] = port
        self.http_pids["nginx"] = [p.pid]
        self.argv_used["nginx http"] = ("nginx -p DIR -c nginx.conf  (master_process off; upstream keepalive 64; "
                                        "proxy_pass http://origin; proxy_http_version 1.1; Connection \"\")")

    def start_socat(self):
        ports, pids = {}, []
        for what, target in (("iperf", self.iperf_port), ("echo", self.echo_port)):
            port = free_port()
            p = self.procs.start("socat-" + what, ["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,backlog=4096"
                                                   % port, "TCP:127.0.0.1:%d" % target], self.path("socat.log"))
            wait_for(lambda: listening(port), 10, "socat", p)
            ports[what] = port
            self.argv_used["socat"] = " ".join(p.args[:1] + p.args[1:]).replace(str(port), "PORT").replace(
                str(target), "TARGET")
            pids.append(p.pid)
        self.ports["socat"] = ports
        self.cpu_pids["socat"] = pids

    def start_sshd(self):
        if not os.path.isdir("/run/sshd"):     # sshd's privilege separation directory
            os.makedirs("/run/sshd", 0o755)
            self.made_run_sshd = True
        for k in ("hostkey", "id"):
            r = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.path(k)], 30)
            if r.returncode:
                raise RuntimeError("ssh-keygen: " + r.stderr)
        shutil.copy(self.path("id.pub"), self.path("authorized_keys"))
        self.sshd_port = free_port()
        cfg = ("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\n"
               "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
               "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding yes\n"
               "GatewayPorts no\nX11Forwarding no\nPrintMotd no\nPrintLastLog no\nUseDNS no\n"
               "Ciphers aes128-gcm@openssh.com\nMaxStartups 100\nMaxSessions 100\n"
               % (self.sshd_port, self.path("hostkey"), self.path("sshd.pid"), self.path("authorized_keys")))
        log = self.path("sshd.log")
        self.sshd = self.procs.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", self.write("sshd_config", cfg)], log)
        wait_for(lambda: listening(self.sshd_port), 10, "sshd", self.sshd, log)
        self.argv_used["sshd"] = ("/usr/sbin/sshd -D -e -f sshd_config  (ListenAddress 127.0.0.1, own HostKey and "
                                  "AuthorizedKeysFile, root by key, UsePAM no, Ciphers aes128-gcm@openssh.com)")

    def ssh_argv(self, ip, ep, hp):
        fwd = ["-R", "127.0.0.1:%d:127.0.0.1:%d" % (hp, self.origin_port)] if hp else []
        return ["ssh", "-F", "/dev/null", "-i", self.path("id"), "-p", str(self.sshd_port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "ExitOnForwardFailure=yes", "-o", "Ciphers=aes128-gcm@openssh.com", "-o", "LogLevel=ERROR",
                "-R", "127.0.0.1:%d:127.0.0.1:%d" % (ip, self.iperf_port),
                "-R", "127.0.0.1:%d:127.0.0.1:%d" % (ep, self.echo_port)] + fwd

    def start_ssh(self, variant):
        ip, ep = free_port(), free_port()
        hp = free_port() if "http" in self.need else 0
        argv = self.ssh_argv(ip, ep, hp)
        if variant == "ssh":
            argv += ["-N", "root@127.0.0.1"]
        else:   # a pty session: interactive, so TCP_NODELAY on the transport at both ends
            argv += ["-tt", "root@127.0.0.1", "exec sleep 100000"]
        log = self.path(variant + ".log")
        p = self.procs.start(variant, argv, log, stdin=subprocess.PIPE)
        self.ports[variant] = {"iperf": ip, "echo": ep}
        if hp:
            self.ports[variant]["http"] = hp
        for q in self.ports[variant].values():
            wait_for(lambda: listening(q), 15, variant + " -R listener", p, log)
        self.cpu_pids[variant] = [self.sshd.pid, p.pid]
        self.argv_used[variant] = " ".join(("'%s'" % x) if " " in x else x for x in argv)

    def setup(self):
        self.start_backends()
        tcp_figs = {"tput1", "tput8", "rr", "cps1", "cps50"} & self.need
        if "http" in self.need:
            self.start_origin()
        variants = set(self.a.variants)
        paths = tcp_figs or "http" in self.need     # something goes through the proxies
        if paths:
            if "wmp" in variants:
                self.start_wmp("wmp", False)
            if "wmp-tls" in variants:
                self.start_wmp("wmp-tls", True)
            # idle with the mappings registered, before any traffic
            for v in ("wmp", "wmp-tls"):
                if v in self.wmp:
                    time.sleep(0.3)
                    for role, p in zip(("server", "client"), self.wmp[v]):
                        self.mem.append(("%s idle (fresh)" % v, role, status_kb(p.pid, "RssAnon"),
                                         status_kb(p.pid, "VmRSS")))
        if "http" in self.need and "nginx" in variants:
            self.start_nginx_rproxy()
        if paths:
            if "haproxy" in variants:
                self.start_haproxy()
            if "ssh" in variants or "ssh-nd" in variants:
                self.start_sshd()
                for v in ("ssh", "ssh-nd"):
                    if v in variants:
                        self.start_ssh(v)
            for v, hops in (("relay1", 1), ("relay2", 2)):
                if v in variants:
                    self.start_relays(v, hops)
        if tcp_figs:
            if "nginx" in variants:
                self.start_nginx_stream()
            if "socat" in variants:
                self.start_socat()

    def cleanup(self):
        self.procs.stop_all()
        if self.made_run_sshd:
            try:
                os.rmdir("/run/sshd")
            except OSError:
                pass
        if self.a.keep:
            print("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- figures

    def record(self, fig, variant, rep, value, unit, extra=""):
        self.results.append((fig, variant, rep, value, unit, extra))

    def sampler(self, variant, fig):
        """Samples RssAnon of both wmproxyd roles every 20 ms until stopped."""
        if variant not in self.wmp:
            return None
        stop = threading.Event()
        pids = [p.pid for p in self.wmp[variant]]

        def loop():
            while not stop.is_set():
                for role, pid in zip(("server", "client"), pids):
                    kb = status_kb(pid, "RssAnon")
                    key = (variant, role, fig)
                    if kb > self.peak.get(key, 0):
                        self.peak[key] = kb
                stop.wait(0.02)
        th = threading.Thread(target=loop, daemon=True)
        th.start()
        return stop, th

    def iperf(self, fig, variant, rep, streams):
        for attempt in (1, 2):
            # iperf3 -s serves one test at a time: let it finish tearing down the last one
            end = time.monotonic() + 15
            while busy_conns(self.iperf_port) and time.monotonic() < end:
                time.sleep(0.1)
            err = self.iperf_once(fig, variant, rep, streams)
            if err is None:
                return
            self.log("%s %s run %d attempt %d failed: %s" % (fig, variant, rep, attempt, err))
        self.record(fig, variant, rep, float("nan"), "Gbit/s", "failed: %s" % err)

    def iperf_once(self, fig, variant, rep, streams):
        port = self.ports[variant]["iperf"]
        q = self.a.quick
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-J", "--connect-timeout", "5000"]
        if streams == 1:
            argv += ["-n", "512M" if q else "2G"]
        else:
            argv += ["-P", str(streams), "-t", "2" if q else "5"]
        smp = self.sampler(variant, fig)
        e0, m0 = self.ends_cpu(self.iperf_srv), machine_busy()
        c0, t0 = cpu_seconds(self.cpu_pids[variant]), time.monotonic()
        try:
            r = run(argv, 120)
        except subprocess.TimeoutExpired:
            r = None
        c1, t1 = cpu_seconds(self.cpu_pids[variant]), time.monotonic()
        e1, m1 = self.ends_cpu(self.iperf_srv), machine_busy()
        if smp:
            smp[0].set()
            smp[1].join()
        try:
            j = json.loads(r.stdout)
            if "error" in j:
                raise ValueError(j["error"])
            s = j["end"]["sum_received"]
            gbps, nbytes = s["bits_per_second"] / 1e9, s["bytes"]
        except Exception as e:   # noqa: BLE001 - a failed run is retried, then recorded
            return str(e) if r else "timeout"
        self.record(fig, variant, rep, gbps, "Gbit/s", "%d bytes in %.1fs" % (nbytes, t1 - t0))
        if streams == 1 and self.cpu_pids[variant]:
            self.record("cpu", variant, rep, (c1 - c0) / (nbytes / GIB), "s/GiB", "%.2f CPU s" % (c1 - c0))
        if streams == 1:
            # what the two iperf3 ends spend, and how many cores the machine kept busy: with
            # the proxies' CPU they say what a throughput target asks of the tunnel's CPU
            self.record("ends_cpu", variant, rep, (e1 - e0) / (nbytes / GIB), "s/GiB", "%.2f CPU s" % (e1 - e0))
            self.record("busy", variant, rep, (m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9), "cores", "")
        return None

    def ends_cpu(self, server):
        """CPU seconds of the load's ends: server (the iperf3 server, the nginx origin) and the
        clients run and reaped so far (iperf3 -c, wrk)."""
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cpu_seconds([server.pid]) + ru.ru_utime + ru.ru_stime

    def rr(self, variant, rep):
        secs = 1 if self.a.quick else 3
        r = run([TOOL, "rr", str(self.ports[variant]["echo"]), str(secs)], secs + 30)
        try:
            j = json.loads(r.stdout)
        except ValueError:
            self.log("rr %s failed: %s" % (variant, r.stderr.strip()))
            self.record("rr", variant, rep, float("nan"), "/s", "failed")
            return
        self.record("rr", variant, rep, j["rps"], "/s")
        self.record("rr_p50", variant, rep, j["p50_us"], "us")
        self.record("rr_p99", variant, rep, j["p99_us"], "us")

    def cps(self, variant, rep, conc):
        secs = 1 if self.a.quick else 3
        fig = "cps%d" % conc
        r = run([TOOL, "cps", str(self.ports[variant]["echo"]), str(secs), str(conc)], secs + 30)
        try:
            j = json.loads(r.stdout)
        except ValueError:
            self.log("%s %s failed: %s" % (fig, variant, r.stderr.strip()))
            self.record(fig, variant, rep, float("nan"), "/s", "failed")
            return
        if j["errors"]:
            self.log("%s %s run %d: %d failed connections" % (fig, variant, rep, j["errors"]))
        self.record(fig, variant, rep, j["cps"], "/s", "errors=%d p50=%.0fus p99=%.0fus" % (
            j["errors"], j["p50_us"], j["p99_us"]))

    def http(self, variant, rep):
        port = self.ports[variant]["http"]
        d = 2 if self.a.quick else 10
        pids = self.http_pids.get(variant, self.cpu_pids.get(variant, []))
        c0, e0, m0 = cpu_seconds(pids), self.ends_cpu(self.origin), machine_busy()
        r = run(["wrk", "-t2", "-c50", "-d%ds" % d, "--latency", "-H", "Host: bench.local",
                 "http://127.0.0.1:%d/bench.html" % port], d + 30)
        c1, e1, m1 = cpu_seconds(pids), self.ends_cpu(self.origin), machine_busy()
        m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
        n = re.search(r"(\d+) requests in", r.stdout)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
        errs = re.search(r"Socket errors: (.*)", r.stdout)
        p99 = re.search(r"^\s+99%\s+(\S+)", r.stdout, re.M)   # the latency distribution, not a stdev column
        if not m:
            self.log("http %s failed: %s %s" % (variant, r.stdout, r.stderr))
            self.record("http", variant, rep, float("nan"), "req/s", "failed")
            return
        extra = "p99=%s" % (p99.group(1) if p99 else "?")
        if bad:
            extra += " non2xx=%s" % bad.group(1)
            self.log("http %s: %s non-2xx responses" % (variant, bad.group(1)))
        if errs:
            extra += " socket_errors=" + errs.group(1).replace(",", "")
        self.record("http", variant, rep, float(m.group(1)), "req/s", extra)
        if pids and n and int(n.group(1)):
            self.record("http_cpu", variant, rep, (c1 - c0) / int(n.group(1)) * 1e6, "us/req",
                        "%.2f CPU s" % (c1 - c0))
        if n and int(n.group(1)):
            # what wrk and the nginx origin spend, and the cores the machine kept busy: with the
            # proxies' CPU they say what the HTTP target asks of the tunnel's CPU
            self.record("http_ends", variant, rep, (e1 - e0) / int(n.group(1)) * 1e6, "us/req",
                        "%.2f CPU s" % (e1 - e0))
            self.record("http_busy", variant, rep, (m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9), "cores", "")

    def memory(self):
        """Fresh pairs (plain, TLS): idle, then holding 1,000 and 10,000 idle streams."""
        for tls in (False, True):
            v = "mem-tls" if tls else "mem"
            eport = free_port()
            maps = "[mapping echo]\nmode = tcp\nlocal_addr = 127.0.0.1:%d\n" % self.echo_port
            s, c = self.wmp_pair(v, tls, maps, "map_tcp_bind = 127.0.0.1:%d\nmax_streams = 12000\n" % eport,
                                 "max_streams = 12000\n")
            wait_for(lambda: listening(eport), 10, v + " listener")
            time.sleep(0.5)
            label = "tls" if tls else "plain"
            base = {}
            for role, p in (("server", s), ("client", c)):
                base[role] = status_kb(p.pid, "RssAnon")
                self.mem.append(("idle, %s" % label, role, base[role], status_kb(p.pid, "VmRSS")))
            held = 0
            holders = []
            for n in (1000, 10000):
                hp = self.procs.start("hold", [TOOL, "hold", str(eport), str(n - held)], self.path("hold.log"),
                                      stdout=subprocess.PIPE)
                holders.append(hp)
                line = hp.stdout.readline().decode().strip()
                if not line.startswith("held"):
                    self.log("%s: holding %d streams failed: %s" % (v, n, line))
                    break
                held = n
                time.sleep(0.5)
                for role, p in (("server", s), ("client", c)):
                    ra = status_kb(p.pid, "RssAnon")
                    self.mem.append(("%d streams, %s" % (n, label), role, ra, status_kb(p.pid, "VmRSS")))
                    self.record("mem_per_stream", "%s-%s" % (v, role), n, (ra - base[role]) / n, "KiB/stream")
            for hp in holders:
                self.procs.stop(hp)
            self.procs.stop(c)
            self.procs.stop(s)

    def size(self):
        out = self.path("wmproxyd.stripped")
        r = run(["strip", "-o", out, WMPROXYD], 30)
        if r.returncode:
            self.log("strip: " + r.stderr)
            return
        self.record("size", "wmp", 0, os.path.getsize(out) / 1024, "KiB",
                    "unstripped %.0f KiB" % (os.path.getsize(WMPROXYD) / 1024))

    def aes(self, rep):
        """AES-128-GCM on one core (openssl speed, 16 KiB blocks), as CPU s/GiB to encrypt and
        to decrypt: with relay2's CPU it gives the floor of a two-process TLS tunnel."""
        for fig, extra in (("aes_enc", []), ("aes_dec", ["-decrypt"])):
            r = run(["openssl", "speed", "-elapsed", "-seconds", "1", "-bytes", "16384"] + extra +
                    ["-evp", "aes-128-gcm"], 60)
            m = re.search(r"^AES-128-GCM\s+([\d.]+)k\s*$", r.stdout, re.M)
            if not m:
                self.log("openssl speed: %s" % (r.stdout + r.stderr)[-200:])
                return
            self.record(fig, "openssl", rep, GIB / (float(m.group(1)) * 1000), "s/GiB",
                        "%s kB/s" % m.group(1))

    def guarded(self, fn, *args):
        """One measurement; a failure is logged and recorded, the rest goes on."""
        try:
            fn(*args)
        except Exception as e:   # noqa: BLE001
            self.log("%s%r failed: %s: %s" % (fn.__name__, args, type(e).__name__, e))

    def measure(self):
        runs = self.a.runs
        v = [x for x in TCP_VARIANTS if x in self.a.variants]
        v_rr = [x for x in v if x not in THROUGHPUT_ONLY]
        for rep in range(1, runs + 1):
            self.log("round %d of %d" % (rep, runs))
            for var in v:
                if "tput1" in self.need:
                    self.guarded(self.iperf, "tput1", var, rep, 1)
            if "tput1" in self.need and "wmp-tls" in v and "relay2" in v:
                self.guarded(self.aes, rep)
            for var in v:
                if "tput8" in self.need:
                    self.guarded(self.iperf, "tput8", var, rep, 8)
            for var in v_rr:
                if "rr" in self.need:
                    self.guarded(self.rr, var, rep)
            for var in v_rr:
                if "cps1" in self.need:
                    self.guarded(self.cps, var, rep, 1)
            for var in v_rr:
                if "cps50" in self.need:
                    self.guarded(self.cps, var, rep, 50)
            for var in HTTP_VARIANTS:
                if "http" in self.need and var in self.a.variants:
                    self.guarded(self.http, var, rep)
        for var in ("wmp", "wmp-tls"):
            if var in self.wmp:
                for role, p in zip(("server", "client"), self.wmp[var]):
                    self.mem.append(("%s right after the runs" % var, role, status_kb(p.pid, "RssAnon"),
                                     status_kb(p.pid, "VmRSS")))
                    self.mem.append(("%s peak VmHWM (all runs)" % var, role, 0, status_kb(p.pid, "VmHWM")))
        if "mem" in self.need:
            self.log("memory: idle streams")
            self.guarded(self.memory)
        if "size" in self.need:
            self.guarded(self.size)

    # ---------------------------------------------------------------- report

    def median(self, fig, var):
        vals = [r[3] for r in self.results if r[0] == fig and r[1] == var and r[3] == r[3]]
        return statistics.median(vals) if vals else None

    def report(self):
        rows = [("tput1", "1 stream Gbit/s", "%.2f"), ("tput8", "8 streams Gbit/s", "%.2f"),
                ("cpu", "CPU s/GiB (1 str)", "%.2f"), ("ends_cpu", "  iperf3 CPU s/GiB", "%.2f"),
                ("busy", "  busy cores", "%.2f"), ("rr", "64B round trips/s", "%.0f"),
                ("rr_p50", "  p50 latency us", "%.1f"), ("rr_p99", "  p99 latency us", "%.1f"),
                ("cps1", "new conn/s, 1", "%.0f"), ("cps50", "new conn/s, 50", "%.0f"),
                ("http", "HTTP req/s (wrk)", "%.0f"), ("http_cpu", "  proxy CPU us/req", "%.1f"),
                ("http_ends", "  wrk + origin us/req", "%.1f"), ("http_busy", "  busy cores", "%.2f")]
        cols = [x for x in TCP_VARIANTS if x in self.a.variants]
        print()
        print("Medians of %d run(s), interleaved; (ratio to direct). Host: %d CPUs, load %s" % (
            self.a.runs, os.cpu_count(), " ".join(open("/proc/loadavg").read().split()[:3])))
        print("%-19s" % "figure" + "".join("%-17s" % c for c in cols))
        legend = ("HTTP row: direct = nginx origin, nginx = nginx http reverse proxy (elsewhere nginx = stream\n"
                  "proxy); haproxy and ssh-nd relay the bytes to the origin (tcp mode, -R), as in the issue's table")
        for fig, label, fmt in rows:
            if not any(r[0] == fig for r in self.results):
                continue
            line = "%-19s" % label
            d = self.median(fig, "direct")
            for c in cols:
                m = self.median(fig, c)
                if m is None:
                    cell = "-"
                elif fig in ("cpu", "http_cpu", "ends_cpu", "busy", "http_ends", "http_busy") or c == "direct" or not d:
                    cell = fmt % m
                else:
                    cell = (fmt % m) + " (%.2f)" % (m / d)
                line += "%-17s" % cell
            print(line)
        if any(r[0] == "http" for r in self.results):
            print(legend)
        if self.mem:
            print()
            print("Memory (KiB)                             %-22s%-22s" % ("server RssAnon/VmRSS", "client RssAnon/VmRSS"))
            labels = []
            for lab, _, _, _ in self.mem:
                if lab not in labels:
                    labels.append(lab)
            for lab in labels:
                cells = []
                for role in ("server", "client"):
                    e = [m for m in self.mem if m[0] == lab and m[1] == role]
                    cells.append("%s / %s" % (e[0][2] or "-", e[0][3]) if e else "-")
                print("  %-39s%-22s%-22s" % (lab, cells[0], cells[1]))
            for (var, role, fig), kb in sorted(self.peak.items()):
                print("  %-39s%-22s" % ("%s peak RssAnon in %s, %s" % (var, fig, role), kb))
            for r in self.results:
                if r[0] == "mem_per_stream":
                    print("  %-39s%.2f KiB/stream" % ("%s, %d streams" % (r[1], r[2]), r[3]))
        for r in self.results:
            if r[0] == "size":
                print("\nstripped wmproxyd: %.1f KiB (%s)" % (r[3], r[5]))
        self.targets()
        self.write_csv()

    def targets(self):
        T = []
        md = self.median

        def add(name, val, req, ok, fmt="%.2f"):
            if val is None or req is None:
                T.append((name, "n/a", "n/a" if req is None else fmt % req, "n/a"))
            else:
                T.append((name, fmt % val, fmt % req, "PASS" if ok(val, req) else "FAIL"))
        ge = lambda v, r: v >= r   # noqa: E731
        le = lambda v, r: v <= r   # noqa: E731
        mul = lambda x, k: None if x is None else x * k   # noqa: E731
        if "tput1" in self.need:
            add("plain 1-stream Gbit/s >= haproxy", md("tput1", "wmp"), md("tput1", "haproxy"), ge)
            add("plain CPU s/GiB, both roles <= 1.5", md("cpu", "wmp"), 1.5, le)
            add("TLS 1-stream Gbit/s >= 1.3 x ssh", md("tput1", "wmp-tls"), mul(md("tput1", "ssh"), 1.3), ge)
            add("TLS CPU s/GiB <= ssh's", md("cpu", "wmp-tls"), md("cpu", "ssh"), le)
        if "rr" in self.need:
            add("plain round trips/s >= 0.45 x direct (*)", md("rr", "wmp"), mul(md("rr", "direct"), 0.45), ge, "%.0f")
            add("TLS round trips/s >= 0.45 x direct (*)", md("rr", "wmp-tls"), mul(md("rr", "direct"), 0.45), ge,
                "%.0f")
        for fig, lab in (("cps1", "1 at a time"), ("cps50", "50 at once")):
            if fig in self.need:
                for v, vl in (("wmp", "plain"), ("wmp-tls", "TLS")):
                    add("%s new conn/s %s >= 1.5 x ssh-nd" % (vl, lab), md(fig, v), mul(md(fig, "ssh-nd"), 1.5), ge,
                        "%.0f")
        if "http" in self.need:
            add("HTTP req/s via http mapping >= 0.6 x direct", md("http", "wmp"), mul(md("http", "direct"), 0.6), ge,
                "%.0f")
        for lab, role, ra, _ in self.mem:
            if lab == "idle, tls":
                add("idle RssAnon KiB, TLS, %s <= 1536" % role, ra, 1536, le, "%.0f")
        for r in self.results:
            if r[0] == "mem_per_stream" and r[2] == 10000:
                add("RssAnon KiB/stream @10k, %s <= 3" % r[1], r[3], 3, le)
        peaks = {}
        for (var, role, _), kb in self.peak.items():
            peaks[(var, role)] = max(kb, peaks.get((var, role), 0))
        for (var, role), kb in sorted(peaks.items()):
            add("peak RssAnon KiB in tput, %s %s <= 8192" % (var, role), kb, 8192, le, "%.0f")
        for r in self.results:
            if r[0] == "size":
                add("stripped wmproxyd KiB <= 256", r[3], 256, le, "%.1f")
        self.target_rows = T
        print("\nTargets")
        print("  %-50s %-10s %-10s %s" % ("target", "measured", "required", "result"))
        for t in T:
            print("  %-50s %-10s %-10s %s" % t)
        if md("tput1", "relay2"):
            print("  floors: plain tunnel 1-stream = %.2f x relay2 (two bare relays); haproxy = %.2f x relay1"
                  % (md("tput1", "wmp") / md("tput1", "relay2"), md("tput1", "haproxy") / md("tput1", "relay1"))
                  if md("tput1", "wmp") and md("tput1", "haproxy") and md("tput1", "relay1") else "")
        enc, dec, r2 = md("aes_enc", "openssl"), md("aes_dec", "openssl"), md("cpu", "relay2")
        if enc and dec and r2 and md("cpu", "wmp-tls"):
            print("  TLS tunnel CPU floor = relay2 %.2f + AES-128-GCM encrypt %.2f + decrypt %.2f (openssl speed,"
                  " one core)\n      = %.2f s/GiB; wmp-tls %.2f, ssh %s" % (
                      r2, enc, dec, r2 + enc + dec, md("cpu", "wmp-tls"),
                      "%.2f" % md("cpu", "ssh") if md("cpu", "ssh") else "-"))
        # rate x (proxies' + iperf3 ends' CPU s/GiB) = cores busy for the pipeline, at most all of
        # them: so 1 stream >= k x a baseline's rate leaves the tunnel at most
        # cores / (k x baseline rate) - its iperf3 ends' CPU per GiB, for cores = every core (a
        # hard bound) and for the cores this run kept busy
        ncpu = os.cpu_count() or 1
        for w, b, k, floor in (("wmp", "haproxy", 1.0, r2),
                               ("wmp-tls", "ssh", 1.3, r2 + enc + dec if enc and dec and r2 else None)):
            cw, ew, bw, tb = md("cpu", w), md("ends_cpu", w), md("busy", w), md("tput1", b)
            if cw and ew and bw and tb:
                rate = k * tb * 1e9 / 8 / GIB
                print("  %s 1-stream >= %.1f x %s (%.2f GiB/s) leaves its CPU <= %.2f s/GiB on all %d cores,"
                      "\n      <= %.2f on the %.2f busy (iperf3 ends %.2f s/GiB); it spends %.2f%s" % (
                          w, k, b, rate, ncpu / rate - ew, ncpu, bw / rate - ew, bw, ew, cw,
                          ", its floor is %.2f" % floor if floor else ""))
        d, w, h, s = (md("http", v) for v in ("direct", "wmp", "haproxy", "ssh-nd"))
        if d and w and h and s:
            print("  HTTP against the issue's table (direct 48,900 req/s there): haproxy = %.2f x direct here"
                  " (there 0.69),\n      ssh-nd = %.2f (there 0.49); the http mapping = %.2f x haproxy"
                  " (0.6 x direct there = 0.87 x haproxy)" % (h / d, s / d, w / h))
        # the same identity per request: rate x (proxies' + wrk's + origin's CPU per request) = cores busy
        dw, cw, ew, bw = md("http", "direct"), md("http_cpu", "wmp"), md("http_ends", "wmp"), md("http_busy", "wmp")
        if dw and cw and ew and bw:
            rate = 0.6 * dw
            print("  wmp HTTP >= 0.6 x direct (%.0f req/s) leaves its CPU <= %.1f us/req on all %d cores,"
                  "\n      <= %.1f on the %.2f busy (wrk + origin %.1f us/req; direct: %s us/req on %s cores);"
                  " it spends %.1f" % (
                      rate, ncpu / rate * 1e6 - ew, ncpu, bw / rate * 1e6 - ew, bw, ew,
                      "%.1f" % md("http_ends", "direct") if md("http_ends", "direct") else "-",
                      "%.2f" % md("http_busy", "direct") if md("http_busy", "direct") else "-", cw))
        hr1, hr2 = md("http", "relay1"), md("http", "relay2")
        if d and w and h and hr1 and hr2:
            c = [md("http_cpu", v) for v in ("wmp", "relay2", "haproxy", "relay1")]
            print("  HTTP beside bare relays (not a floor: a mux batches): relay2 = %.2f x direct; the http mapping ="
                  " %.2f x relay2;"
                  " haproxy = %.2f x relay1\n      proxy CPU us/request: wmp %s, relay2 %s, haproxy %s, relay1 %s"
                  % ((hr2 / d, w / hr2, h / hr1) + tuple("%.1f" % x if x else "-" for x in c)))
        if "rr" in self.need:
            print("  (*) rathole is not installed here: the issue's rathole figure (8,280/s vs 22,200/s direct)"
                  "\n      x 1.2 gives >= 0.45 x direct, measured against this run's direct.")

    def write_csv(self):
        with open(self.a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["kind", "figure", "variant", "run", "value", "unit", "detail"])
            for r in self.results:
                w.writerow(["run"] + [("%.4g" % x) if isinstance(x, float) else x for x in r])
            seen = []
            for r in self.results:
                if (r[0], r[1]) not in seen and r[0] != "mem_per_stream":
                    seen.append((r[0], r[1]))
            for fig, var in seen:
                m = self.median(fig, var)
                d = self.median(fig, "direct")
                ratio = "%.3f" % (m / d) if m is not None and d and fig != "cpu" else ""
                unit = next(r[4] for r in self.results if r[0] == fig)
                w.writerow(["median", fig, var, "", "" if m is None else "%.4g" % m, unit, ratio and "ratio=" + ratio])
            for lab, role, ra, rss in self.mem:
                w.writerow(["memory", lab, role, "", ra, "KiB RssAnon", "VmRSS=%d" % rss])
            for (var, role, fig), kb in sorted(self.peak.items()):
                w.writerow(["memory", "peak RssAnon during " + fig, "%s-%s" % (var, role), "", kb, "KiB", ""])
            for t in getattr(self, "target_rows", []):
                w.writerow(["target", t[0], "", "", t[1], "required " + t[2], t[3]])
        print("\nCSV: %s" % os.path.relpath(self.a.csv, os.getcwd()))


T0 = time.monotonic()


def main():
    global WMPROXYD
    ap = argparse.ArgumentParser(description="wmproxyd benchmark (loopback only)")
    ap.add_argument("--quick", action="store_true", help="1 run of each, short durations")
    ap.add_argument("--only", action="append", default=[],
                    help="figures to run, comma-separated: %s (or tput, cps, cpu, memory)" % ", ".join(FIGURES))
    ap.add_argument("--variants", default=",".join(TCP_VARIANTS), help="comma-separated subset of " +
                    ", ".join(TCP_VARIANTS))
    ap.add_argument("--runs", type=int, help="runs of each figure (default 3, --quick 1)")
    ap.add_argument("--csv", default=os.path.join(ROOT, "bench", "results.csv"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    a = ap.parse_args()
    a.runs = a.runs or (1 if a.quick else 3)
    a.variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in a.variants if v not in TCP_VARIANTS]
    if bad:
        ap.error("unknown variant %s" % ",".join(bad))
    need = set()
    for o in a.only:
        for n in o.split(","):
            if n in GROUPS:
                need.update(GROUPS[n])
            elif n in FIGURES:
                need.add(n)
            elif n:
                ap.error("unknown figure %s" % n)
    if "direct" not in a.variants:
        a.variants.insert(0, "direct")
    for f in (WMPROXYD, TOOL):
        if not os.access(f, os.X_OK):
            sys.exit("bench: %s is missing (run scripts/bench, or make)" % f)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 10200 and (not need or "mem" in need):
        print("bench: RLIMIT_NOFILE hard limit is %d: 10,000 streams need ~10,100 per process" % hard)

    b = Bench(a)
    b.need = need or set(FIGURES)
    # a private copy: the same binary for the whole run even if ./wmproxyd is rebuilt meanwhile
    src = WMPROXYD
    for _ in range(50):
        try:
            shutil.copy2(src, b.path("wmproxyd"))
            if run([b.path("wmproxyd"), "-v"], 10).returncode == 0:
                break
        except (OSError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.2)
    else:
        b.cleanup()
        sys.exit("bench: cannot copy a working %s" % src)
    WMPROXYD = b.path("wmproxyd")

    def on_signal(sig, _):
        raise KeyboardInterrupt("signal %d" % sig)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    rc = 0
    try:
        b.log("wmproxyd: copy of %s (%s); temp dir %s; load %s" % (
            src, run([WMPROXYD, "-v"], 10).stdout.split("\n")[0], b.tmp, open("/proc/loadavg").read().strip()))
        b.setup()
        b.log("setup done: %s" % ", ".join(sorted(b.ports)))
        b.measure()
        b.report()
        if b.argv_used:
            print("\nBaselines as started:")
            for v, argv in b.argv_used.items():
                print("  %-10s %s" % (v, argv))
    except KeyboardInterrupt as e:
        print("bench: interrupted (%s)" % e, file=sys.stderr)
        rc = 130
    except Exception as e:   # noqa: BLE001
        print("bench: %s" % e, file=sys.stderr)
        rc = 1
    finally:
        b.cleanup()
        b.log("done")
    return rc


if __name__ == "__main__":
    sys.exit(main())
