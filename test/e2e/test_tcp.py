"""TCP mapping end to end: bytes, half-close, many streams, failures."""
import hashlib
import os
import socket
import threading
import time

from lib import (WMPROXYD_REL, Skip, TcpServer, closed_at_once, connect, echo_handler, free_port, http_page_handler,
                 pattern_bytes, recv_all, recv_count, run, start_pair, tcp_mapping, test, wait_closed, wait_until)


@test(timeout=60)
def seed_scenario_curl(ctx):
    """A local web server reached through map_tcp_bind with curl, as a new user would."""
    web = TcpServer(ctx, http_page_handler(b"hello from the private network\n"))
    pub = free_port()
    start_pair(ctx, tcp_mapping("web", web.port), server_extra="map_tcp_bind = 127.0.0.1:%d\n" % pub)
    for host in ("127.0.0.1", "localhost"):
        r = run(["curl", "-sS", "--max-time", "10", "http://%s:%d/" % (host, pub)])
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"hello from the private network\n", r.stdout


@test(timeout=60)
def echo_roundtrip(ctx):
    e = TcpServer(ctx, echo_handler)
    pub = free_port()
    start_pair(ctx, tcp_mapping("echo", e.port), server_extra="map_tcp_bind = 127.0.0.1:%d\n" % pub)
    s = socket.create_connection(("127.0.0.1", pub), timeout=10)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    s.close()


MiB = 1 << 20


def hash_sink_handler(c):
    """Hash everything until EOF, then answer the hex SHA-256 and close."""
    h = hashlib.sha256()
    buf = bytearray(MiB)
    mv = memoryview(buf)
    while True:
        n = c.recv_into(buf)
        if not n:
            break
        h.update(mv[:n])
    c.sendall(h.hexdigest().encode())


def send_random(sock, total, chunk=MiB):
    """Send total random bytes; return their SHA-256 hex. Only one chunk is
    held at a time."""
    h = hashlib.sha256()
    left = total
    while left > 0:
        d = os.urandom(min(chunk, left))
        h.update(d)
        sock.sendall(d)
        left -= len(d)
    return h.hexdigest()


def recv_hash(sock):
    h = hashlib.sha256()
    buf = bytearray(MiB)
    mv = memoryview(buf)
    n_total = 0
    while True:
        n = sock.recv_into(buf)
        if not n:
            return h.hexdigest(), n_total
        h.update(mv[:n])
        n_total += n


@test(timeout=150)
def big_transfer_each_way(ctx):
    """256 MiB up (then half-close) and 256 MiB down; SHA-256 must match."""
    size = 256 * MiB
    up = TcpServer(ctx, hash_sink_handler)
    sent = {}

    def source(c):
        sent["sha"] = send_random(c, size)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
    down = TcpServer(ctx, source)
    pu, pd = free_port(), free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("up", up.port, pu) + tcp_mapping("down", down.port, pd),
                         server_extra="allow_ports = %d,%d\n" % (pu, pd))

    t0 = time.monotonic()
    u = socket.create_connection(("127.0.0.1", pu), timeout=60)
    want = send_random(u, size)
    u.shutdown(socket.SHUT_WR)
    got = recv_all(u).decode()
    u.close()
    t_up = time.monotonic() - t0
    assert got == want, "upload: service hashed %r, we sent %r" % (got, want)

    t0 = time.monotonic()
    d = socket.create_connection(("127.0.0.1", pd), timeout=60)
    got, n = recv_hash(d)
    d.close()
    t_down = time.monotonic() - t0
    wait_until(lambda: "sha" in sent, 10, "the source to finish")
    assert n == size, "download: got %d bytes of %d" % (n, size)
    assert got == sent["sha"], "download: sha mismatch"
    print("    256 MiB up %.1fs (%.0f MiB/s), down %.1fs (%.0f MiB/s)" % (t_up, 256 / t_up, t_down, 256 / t_down))
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=120)
def many_concurrent_streams(ctx):
    """200 streams at once through an echo service, 64 KiB to 1 MiB each,
    every one with its own bytes: all come back intact."""
    n = 200
    e = TcpServer(ctx, echo_handler)
    pub = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("echo", e.port), server_extra="map_tcp_bind = 127.0.0.1:%d\n" % pub)
    sizes = [64 * 1024 + (i * 7919 * 4099) % (MiB - 64 * 1024) for i in range(n)]
    results = [None] * n
    start = threading.Barrier(n, timeout=30)

    def one(i):
        payload = pattern_bytes(1000 + i, sizes[i])
        try:
            start.wait()
            sock = socket.create_connection(("127.0.0.1", pub), timeout=60)
            err = []

            def send():
                try:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                except OSError as ex:
                    err.append(ex)
            t = threading.Thread(target=send, daemon=True)
            t.start()
            got = recv_all(sock)
            t.join(60)
            sock.close()
            if err:
                results[i] = "send: %s" % err[0]
            elif got != payload:
                results[i] = "got %d bytes of %d%s" % (len(got), len(payload),
                                                       "" if len(got) != len(payload) else ", content differs")
            else:
                results[i] = "ok"
        except Exception as ex:  # noqa: BLE001 - reported per stream below
            results[i] = "%s: %s" % (type(ex).__name__, ex)
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    bad = ["stream %d (%d bytes): %s" % (i, sizes[i], r) for i, r in enumerate(results) if r != "ok"]
    assert not bad, "%d of %d streams failed:\n%s" % (len(bad), n, "\n".join(bad[:10]))
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def half_close_both_ways(ctx):
    """A FIN travels as a FIN: the other direction stays open."""
    got = {}

    def greeter(conn):
        conn.sendall(b"hello, then my FIN\n")
        conn.shutdown(socket.SHUT_WR)
        got["data"] = recv_all(conn)
    sink = TcpServer(ctx, hash_sink_handler)
    greet = TcpServer(ctx, greeter)
    p1, p2 = free_port(), free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("sink", sink.port, p1) + tcp_mapping("greet", greet.port, p2),
                         server_extra="allow_ports = %d,%d\n" % (p1, p2))

    # the user half-closes; the service answers only after it saw EOF
    data = pattern_bytes(7, 3 * MiB + 123)
    sock = connect(p1)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    assert recv_all(sock).decode() == hashlib.sha256(data).hexdigest()
    sock.close()

    # the service half-closes first; what the user sends afterwards arrives
    sock = connect(p2)
    assert recv_all(sock) == b"hello, then my FIN\n"
    late = pattern_bytes(8, 2 * MiB + 5)
    sock.sendall(late)
    sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: "data" in got, 15, "the service to read to EOF")
    assert got["data"] == late, "service got %d bytes of %d" % (len(got["data"]), len(late))
    wait_closed(sock, 5)
    sock.close()
    assert c.stop() == 0
    assert s.stop() == 0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@test(timeout=120)
def stalled_reader_stops_only_itself(ctx):
    """Users who never read stall only their own streams: four other
    streams move 64 MiB each as fast as without them, and the server holds
    at most about a window per stalled stream.

    max_window = window: a stalled user's stream first runs fast while the
    kernel's socket buffers fill, so auto-tuning may grow its window (to
    max_window, 4 MiB by default) before it stalls, and how far it grows
    depends on timing; this test is about what a stalled stream holds, so
    the window stays fixed (growth is test_faults' long-fat-pipe test).

    Runs the release binaries: under ASan, RSS would measure its shadow
    memory and the quarantine of freed blocks, not what wmproxyd holds."""
    window = 256 * 1024
    n_stall, n_fast, fast_size = 4, 4, 64 * MiB
    block = os.urandom(MiB)
    pushed = {}

    def service(conn):
        cmd = conn.recv(1)
        if cmd == b"F":          # 64 MiB, then close
            for _ in range(fast_size // MiB):
                conn.sendall(block)
        elif cmd == b"S":        # 1 GiB to a user who never reads
            me = conn.fileno()
            pushed[me] = 0
            for _ in range(1024):
                conn.sendall(block)
                pushed[me] += MiB
    svc = TcpServer(ctx, service)
    pub = free_port()
    fixed = "max_window = %d\n" % window
    s, c, _ = start_pair(ctx, tcp_mapping("svc", svc.port), binary=WMPROXYD_REL,
                         server_extra="map_tcp_bind = 127.0.0.1:%d\n%s" % (pub, fixed), client_extra=fixed)

    def fast_round():
        errs = []

        def one():
            try:
                sock = connect(pub, timeout=30)
                sock.sendall(b"F")
                n = recv_count(sock)
                sock.close()
                if n != fast_size:
                    errs.append("got %d of %d bytes" % (n, fast_size))
            except OSError as ex:
                errs.append(str(ex))
        ts = [threading.Thread(target=one, daemon=True) for _ in range(n_fast)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errs and not any(t.is_alive() for t in ts), errs or "fast streams hung"
        return time.monotonic() - t0

    rss_idle = rss_kb(s.pid)
    fast_round()                      # warm up: heap and windows at their working size
    rss0 = rss_kb(s.pid)
    t_free = fast_round()

    peak = [rss_kb(s.pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb(s.pid))
            time.sleep(0.02)
    ctx.closers.append(done.set)
    threading.Thread(target=sample, daemon=True).start()
    stalled = []
    for _ in range(n_stall):
        sock = connect(pub)
        sock.sendall(b"S")
        stalled.append(sock)

    last = {"seen": None, "since": 0.0}

    def settled():
        # stalled: every source blocked, nothing moved for half a second
        cur = dict(pushed)
        if len(cur) < n_stall or cur != last["seen"]:
            last["seen"], last["since"] = cur, time.monotonic()
            return False
        return time.monotonic() - last["since"] >= 0.5
    wait_until(settled, 20, "the stalled streams to stop moving")

    t_stall = fast_round()
    done.set()
    peak[0] = max(peak[0], rss_kb(s.pid))

    growth = (peak[0] - rss0) * 1024
    bound = 4 * window * n_stall + 8 * MiB
    print("    fast round %.2fs free, %.2fs beside %d stalled (each stuck after %s MiB); server RSS idle %d kB, "
          "%d kB -> peak %d kB (+%.1f MiB, bound %.1f MiB)" % (t_free, t_stall, n_stall,
                                                              sorted(v // MiB for v in pushed.values()),
                                                              rss_idle, rss0, peak[0], growth / MiB, bound / MiB))
    assert t_stall <= max(2 * t_free, t_free + 1.0), \
        "stalled streams slowed the others: %.2fs vs %.2fs" % (t_stall, t_free)
    assert growth < bound, "server RSS grew %.1f MiB, bound %.1f MiB" % (growth / MiB, bound / MiB)

    # a stalled stream resumes where it stopped once its user reads
    sock = stalled[0]
    sock.settimeout(10)
    n = 0
    while n < 16 * MiB:
        k = len(sock.recv(MiB))
        assert k, "stalled stream closed"
        n += k
    for sock in stalled:
        sock.close()
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=90)
def bulk_memory_given_back(ctx):
    """64 MiB up and 64 MiB down through a tcp mapping fill the tunnel's
    rings; once the tunnel has been quiet for a heartbeat, each role's
    RssAnon is back within 256 KiB of what it was before the transfer
    (release build; under qemu-user less the translator's code cache:
    Daemon.private_kb)."""
    if not os.path.exists(WMPROXYD_REL):
        raise Skip("no release binary %s (make wmproxyd)" % WMPROXYD_REL)
    size = 64 * MiB
    up = TcpServer(ctx, hash_sink_handler)
    down = TcpServer(ctx, lambda c: (send_random(c, size), c.shutdown(socket.SHUT_WR), recv_all(c)))
    pu, pd = free_port(), free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("up", up.port, pu) + tcp_mapping("down", down.port, pd),
                         server_extra="allow_ports = %d,%d\nheartbeat = 1s\n" % (pu, pd),
                         client_extra="heartbeat = 1s\n", binary=WMPROXYD_REL)
    # warm up: what the first streams allocate once
    for _ in range(3):
        x = connect(pu)
        want = send_random(x, 64 * 1024)
        x.shutdown(socket.SHUT_WR)
        assert recv_all(x).decode() == want
        x.close()
    base = {d: d.private_kb() for d in (s, c)}
    peak = {d: 0 for d in (s, c)}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for d in (s, c):
                peak[d] = max(peak[d], d.private_kb())
            time.sleep(0.02)
    th = threading.Thread(target=sample)
    th.start()
    try:
        u = connect(pu, timeout=60)
        want = send_random(u, size)
        u.shutdown(socket.SHUT_WR)
        assert recv_all(u).decode() == want, "upload corrupted"
        u.close()
        d = connect(pd, timeout=60)
        _, n = recv_hash(d)
        d.close()
        assert n == size, "download: %d bytes of %d" % (n, size)
    finally:
        stop.set()
        th.join()
    # the test shows something only if the transfer took more than the bound
    assert max(peak[d] - base[d] for d in (s, c)) > 256, "the transfer took no memory: %r %r" % (base, peak)
    t0 = time.monotonic()
    for d in (s, c):
        d.wait_private_back(base[d], 256, "peak %d kB" % peak[d])
    for d in (s, c):
        print("    %s RssAnon %d kB -> peak %d kB -> %d kB %.1fs after the transfers" % (
            d.name, base[d], peak[d], d.private_kb(), time.monotonic() - t0))
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=30)
def connect_after_idle_longer_than_connect_timeout(ctx):
    """Both roles sit idle in their wait for longer than connect_timeout,
    then a visitor comes: the client's connect to the local service gets its
    whole connect_timeout, and the bytes go through (a clock read only when
    the pass began timed it out at once)."""
    e = TcpServer(ctx, echo_handler)
    pub = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("echo", e.port), server_extra="map_tcp_bind = 127.0.0.1:%d\n" % pub,
                         client_extra="connect_timeout = 1s\n")
    for i in range(2):
        time.sleep(1.5)   # the idle time under test, not a wait for readiness
        k = socket.create_connection(("127.0.0.1", pub), timeout=10)
        k.sendall(b"after idle %d" % i)
        k.shutdown(socket.SHUT_WR)
        assert recv_all(k) == b"after idle %d" % i
        k.close()
    assert "timed out" not in c.text(), c.text()
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=30)
def local_service_refused(ctx):
    """local_addr refuses: the public connection closes promptly, and the
    next one too; the tunnel stays up."""
    dead = free_port()
    pub = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("dead", dead), server_extra="map_tcp_bind = 127.0.0.1:%d\n" % pub)
    for i in range(3):
        closed_at_once(pub, 3)
    c.wait_log(r"connect 127\.0\.0\.1:%d: Connection refused" % dead, count=3)
    assert "tunnel down" not in c.text() and "tunnel down" not in s.text()
    assert c.stop() == 0
    assert s.stop() == 0
