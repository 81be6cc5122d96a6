"""The tunnel's life: peers that die, freeze, restart or are refused, and
several clients sharing one server."""
import signal
import socket
import time

from lib import (Daemon, TcpServer, client_ini, connect, echo_handler, echo_once, free_port, log_lines, pattern_bytes,
                 recv_all, recv_count, refused, reply_handler, server_ini, start_pair, tcp_mapping, test, wait_closed,
                 wait_until)

HB = "heartbeat = 1s\n"


def open_echo(port):
    """A public connection proven to reach the service."""
    sock = connect(port)
    sock.sendall(b"hello")
    sock.settimeout(10)
    assert sock.recv(5) == b"hello"
    return sock


@test(timeout=60)
def client_killed(ctx):
    """SIGKILL on the client: within 3 heartbeats its public connections
    close and its port stops listening; a new client serves again."""
    e = TcpServer(ctx, echo_handler)
    rp = free_port()
    mapping = tcp_mapping("echo", e.port, rp)
    s, c, tport = start_pair(ctx, mapping, server_extra=HB + "allow_ports = %d\n" % rp, client_extra=HB)
    socks = [open_echo(rp) for _ in range(3)]
    t0 = time.monotonic()
    c.kill()
    for sock in socks:
        wait_closed(sock, 3 - (time.monotonic() - t0))
        sock.close()
    wait_until(lambda: refused(rp), 3 - (time.monotonic() - t0), "port %d to be closed" % rp)
    s.wait_log(r"tunnel down peer=127\.0\.0\.1:\d+", timeout=1)

    c2 = Daemon(ctx, "client2", client_ini(tport, HB, mapping)).start()
    c2.wait_log(r"mapping registered name=echo", timeout=15)
    assert echo_once(rp, b"again") == b"again"
    assert c2.stop() == 0
    assert s.stop() == 0


def end_seen(sock, timeout=5):
    """How a peer ended a connection: 'eof' or 'reset' (bytes still in
    flight are read and dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return "eof"
    except ConnectionResetError:
        return "reset"


def download_then_wait(seen):
    """A service sending part of a 'file', then waiting for the rest of the
    conversation; how its connection ended goes into seen."""
    def handler(c):
        c.sendall(b"x" * 100000)
        seen.append(end_seen(c, 30))
    return handler


def partial_download(port):
    sock = connect(port)
    got = 0
    while got < 100000:
        d = sock.recv(65536)
        assert d, "closed after %d bytes" % got
        got += len(d)
    return sock


@test(timeout=60)
def tunnel_lost_resets_streams(ctx):
    """A tunnel that is lost (a peer killed) resets its streams on the
    other side: the public user of a dead client, and the local service of
    a dead server, see a reset, not a clean end that makes a truncated
    transfer look complete."""
    seen = []
    svc = TcpServer(ctx, download_then_wait(seen))
    rp = free_port()
    mapping = tcp_mapping("dl", svc.port, rp)
    s, c, tport = start_pair(ctx, mapping, server_extra="allow_ports = %d\n" % rp)
    user = partial_download(rp)
    c.kill()
    assert end_seen(user) == "reset"
    user.close()

    c2 = Daemon(ctx, "client2", client_ini(tport, "", mapping)).start()
    c2.wait_log(r"mapping registered name=dl", timeout=15)
    user = partial_download(rp)
    n = len(seen)
    s.kill()
    wait_until(lambda: len(seen) > n, 5, "the service's connection to end")
    assert seen[-1] == "reset", seen
    user.close()
    assert c2.stop() == 0


@test(timeout=60)
def stopped_client_closes_streams(ctx):
    """A client stopped with TERM closes its streams (SPEC 2: "closing
    streams cleanly"): the service and the public user each see the end of
    the stream, not a reset."""
    seen = []
    svc = TcpServer(ctx, download_then_wait(seen))
    rp = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("dl", svc.port, rp), server_extra="allow_ports = %d\n" % rp)
    user = partial_download(rp)
    assert c.stop() == 0
    assert end_seen(user) == "eof"
    wait_until(lambda: seen, 5, "the service's connection to end")
    assert seen == ["eof"]
    assert s.stop() == 0


@test(timeout=60)
def reloaded_client_closes_streams(ctx):
    """A client reload that makes it reconnect (its server settings
    changed) closes the old tunnel's streams as a stop does: the public
    user and the service each see the end of the stream, not a reset (the
    server used to take the old tunnel's end for a lost connection), and
    the mapping serves again on the new tunnel."""
    seen = []
    svc = TcpServer(ctx, download_then_wait(seen))
    rp = free_port()
    mapping = tcp_mapping("dl", svc.port, rp)
    s, c, tport = start_pair(ctx, mapping, server_extra="allow_ports = %d\n" % rp)
    user = partial_download(rp)
    with open(c.conf, "w") as f:
        # the same server under another name
        f.write(client_ini(tport, "", mapping).replace("server = 127.0.0.1:", "server = localhost:"))
    c.signal(signal.SIGHUP)
    c.wait_log(r"reload: the server or its TLS settings changed, reconnecting")
    assert end_seen(user) == "eof"
    user.close()
    wait_until(lambda: seen, 5, "the service's connection to end")
    assert seen == ["eof"]
    s.wait_log(r"tunnel down .*reconnecting after a reload")
    c.wait_log(r"mapping registered name=dl", count=2, timeout=15)
    user = partial_download(rp)
    user.close()
    assert c.stop() == 0
    assert s.stop() == 0


def writes_fail(sock, chunk, within=5):
    """Whether writing chunk after chunk fails (the peer reset the
    connection) within that many seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return True
        time.sleep(0.02)
    return False


def held_download_then_client_quit(ctx, data, finished=True, server_extra="", client_extra=""):
    """A service sends data to a slow public user (a small receive
    buffer) through windows big enough for all of it, so that the server
    holds what the user has not read; then QUIT on the client, which exits.
    finished: the service and the user each end their direction at once,
    so the client's stream is over and its drain ends; else the client's
    drain waits for its shutdown_timeout. Returns (server, user)."""
    sent = []

    def send_all(c):
        c.sendall(data)
        if finished:
            c.shutdown(socket.SHUT_WR)
        sent.append(True)
        recv_count(c)
    svc = TcpServer(ctx, send_all)
    rp = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("dl", svc.port, rp),
                         server_extra="allow_ports = %d\nwindow = 16m\nmax_window = 16m\nmax_streams = 8\n"
                                      "tunnel_buffer = 256m\n%s" % (rp, server_extra),
                         client_extra=client_extra or "shutdown_timeout = 20s\n")
    user = socket.socket()
    user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    user.settimeout(15)
    user.connect(("127.0.0.1", rp))
    if finished:
        user.shutdown(socket.SHUT_WR)
    wait_until(lambda: sent, 10, "the service to send it all")
    c.signal(signal.SIGQUIT)
    assert c.proc.wait(25) == 0
    s.wait_log(r"tunnel down")
    return s, user


@test(timeout=90)
def quit_client_leaves_the_server_to_deliver(ctx):
    """QUIT on the client while the server still holds, for a slow public
    user, bytes of a stream the client has finished (the service sent them
    all and closed): the server delivers every one of them before the end
    of the stream (a FIN), where it used to throw away what it held when
    the GOAWAY came and close, a truncated download looking complete."""
    n = 12 << 20
    data = pattern_bytes(7, n)
    s, user = held_download_then_client_quit(ctx, data)
    got = recv_all(user)
    assert len(got) == n, "the user got %d of %d bytes" % (len(got), n)
    assert got == data
    user.close()
    assert s.stop() == 0


@test(timeout=60)
def stopped_client_uploading_user_sees_the_end(ctx):
    """A user still uploading when the client stops, with nothing held for
    it: its connection is closed at once (the server's shutdown_timeout is
    long), and its next writes fail. The server must not swallow what it
    sends after the stop: a cut upload that looks accepted."""
    svc = TcpServer(ctx, lambda c: recv_count(c))
    rp = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("up", svc.port, rp),
                         server_extra="allow_ports = %d\nshutdown_timeout = 30s\n" % rp)
    user = connect(rp)
    user.sendall(b"u" * 100000)
    assert c.stop() == 0
    s.wait_log(r"tunnel down")
    assert writes_fail(user, b"x" * 65536)
    user.close()
    assert s.stop() == 0


@test(timeout=90)
def orphan_that_drops_the_users_bytes_resets_after_delivering(ctx):
    """After the client's stop the server writes out what it holds for a
    slow user, then the end of the stream; the user, still sending, has
    those bytes dropped (they can go nowhere), and dropped as they come:
    here it writes 8 MiB before it reads at all, which used to stall it
    until the server's shutdown_timeout. It gets every byte held for it,
    then the end, and its writes fail from then on (the server resets the
    connection once it has taken all), so that its own bytes do not look
    delivered."""
    n = 12 << 20
    # the client's stream is not finished: its drain lasts its 1s
    s, user = held_download_then_client_quit(ctx, b"d" * n, finished=False, server_extra="shutdown_timeout = 30s\n",
                                             client_extra="shutdown_timeout = 1s\n")
    user.sendall(b"late" * (2 << 20))        # after the tunnel closed: nowhere to go
    assert recv_count(user) == n
    assert writes_fail(user, b"more")
    user.close()
    assert s.stop() == 0


@test(timeout=60)
def orphaned_stream_drains_for_shutdown_timeout_only(ctx):
    """What the server still holds for a user after the client's GOAWAY
    waits for that user for the server's shutdown_timeout at most: a user
    that reads nothing in that time gets a reset (the download was cut),
    and the server holds nothing more."""
    n = 12 << 20
    s, user = held_download_then_client_quit(ctx, b"d" * n, server_extra="shutdown_timeout = 1s\nlog_level = debug\n")
    s.wait_log(r"stream of 127\.0\.0\.1:\d+ reset: the tunnel closed and shutdown_timeout passed", timeout=5)
    got = 0
    try:
        while True:
            d = user.recv(1 << 20)
            if not d:
                break
            got += len(d)
        end = "eof"
    except ConnectionResetError:
        end = "reset"
    assert end == "reset" and got < n, (end, got)
    user.close()
    assert s.stop() == 0


@test(timeout=60)
def server_restarted(ctx):
    """The server stops (TERM) and comes back on the same port: the client
    reconnects by itself and the mapping serves again."""
    e = TcpServer(ctx, echo_handler)
    pub = free_port()
    extra = "map_tcp_bind = 127.0.0.1:%d\n" % pub
    # with TLS, the certificate comes from files: a generated one would
    # change with the restart and the client's pin would (rightly) refuse it
    s, c, tport = start_pair(ctx, tcp_mapping("echo", e.port), server_extra=extra, stable_cert_files=True)
    assert echo_once(pub) == b"ping"
    sock = open_echo(pub)
    assert s.stop() == 0
    wait_closed(sock, 5)
    sock.close()
    c.wait_log(r"tunnel down", timeout=5)
    c.wait_log(r"reconnecting to 127\.0\.0\.1:%d in \d+ms" % tport, timeout=5)

    s2 = Daemon(ctx, "server2", server_ini(tport, extra, stable_cert_files=True)).start()
    s2.wait_log(r"listening for tunnels")
    c.wait_log(r"tunnel up", count=2, timeout=15)
    c.wait_log(r"mapping registered name=echo", count=2, timeout=5)
    s2.wait_log(r"mapping registered name=echo .*port=%d" % pub)
    assert echo_once(pub, b"after restart") == b"after restart"
    assert c.stop() == 0
    assert s2.stop() == 0


@test(timeout=60)
def wrong_token_backs_off(ctx):
    """A wrong token: refused and logged on both sides, and the client keeps
    retrying with delays that double (jitter picks each in [d/2, d])."""
    e = TcpServer(ctx, echo_handler)
    tport = free_port()
    s = Daemon(ctx, "server", server_ini(tport, "token = right-secret\n")).start()
    s.wait_log(r"listening for tunnels")
    c = Daemon(ctx, "client", client_ini(tport, "token = wrong-secret\n", tcp_mapping("echo", e.port),
                                         reconnect=("100ms", "10s"))).start()
    c.wait_log(r"reconnecting .* \(attempt 5\)", timeout=20)
    s.wait_log(r"tunnel refused peer=127\.0\.0\.1:\d+ reason=\"wrong token\"")
    assert "tunnel up" not in s.text() and "mapping registered" not in s.text()
    assert len(log_lines(c.text(), r"refused the tunnel")) >= 5, c.text()
    assert "tunnel up" not in c.text()

    lines = log_lines(c.text(), r"reconnecting .* in (\d+)ms \(attempt (\d+)\)")
    delays = {int(m.group(2)): int(m.group(1)) for m in lines}
    for n in range(1, 6):
        d = 100 * 2 ** (n - 1)
        assert d // 2 <= delays[n] <= d, "attempt %d waited %dms, want [%d, %d]: %s" % (n, delays[n], d // 2, d,
                                                                                          delays)
    assert delays[4] > delays[1] and delays[5] > delays[2], delays
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def several_clients_and_conflicts(ctx):
    """Two clients, a port each, both serve; a third asks for a taken port
    and one outside allow_ports: both rejected with the reason logged on
    both sides, and its allowed mapping still works."""
    a = TcpServer(ctx, reply_handler(b"from A"))
    b = TcpServer(ctx, reply_handler(b"from B"))
    d = TcpServer(ctx, reply_handler(b"from C"))
    p1, p2, p3, outside = free_port(), free_port(), free_port(), free_port()
    tport = free_port()
    s = Daemon(ctx, "server", server_ini(tport, "allow_ports = %d,%d,%d\n" % (p1, p2, p3))).start()
    s.wait_log(r"listening for tunnels")
    ca = Daemon(ctx, "clientA", client_ini(tport, "", tcp_mapping("a", a.port, p1))).start()
    ca.wait_log(r"mapping registered name=a")
    cb = Daemon(ctx, "clientB", client_ini(tport, "", tcp_mapping("b", b.port, p2))).start()
    cb.wait_log(r"mapping registered name=b")
    assert echo_once(p1, b"") == b"from A"
    assert echo_once(p2, b"") == b"from B"

    cc = Daemon(ctx, "clientC", client_ini(tport, "", tcp_mapping("taken", d.port, p1) +
                                           tcp_mapping("outside", d.port, outside) +
                                           tcp_mapping("c", d.port, p3))).start()
    cc.wait_log(r"mapping (registered|rejected)", count=3)
    cc.wait_log(r"mapping rejected name=taken reason=\".*port %d is held by client 127\.0\.0\.1:\d+" % p1, timeout=1)
    s.wait_log(r"mapping rejected name=taken peer=127\.0\.0\.1:\d+ reason=\".*held by client", timeout=1)
    cc.wait_log(r"mapping rejected name=outside reason=\".*%d.*allow_ports" % outside, timeout=1)
    s.wait_log(r"mapping rejected name=outside .*allow_ports", timeout=1)
    cc.wait_log(r"mapping registered name=c", timeout=1)
    assert refused(outside)
    assert echo_once(p1, b"") == b"from A"     # still A's
    assert echo_once(p2, b"") == b"from B"
    assert echo_once(p3, b"") == b"from C"
    for c in (cc, cb, ca, s):
        assert c.stop() == 0, c.name


@test(timeout=60)
def frozen_client_detected_by_heartbeat(ctx):
    """SIGSTOP the client: no FIN, no heartbeats. The server declares the
    tunnel dead within 3 heartbeats and closes its public connections;
    after SIGCONT the client notices, reconnects, and serves again."""
    e = TcpServer(ctx, echo_handler)
    rp = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("echo", e.port, rp), server_extra=HB + "allow_ports = %d\n" % rp,
                         client_extra=HB)
    socks = [open_echo(rp) for _ in range(2)]
    c.signal(signal.SIGSTOP)
    ctx.closers.append(lambda: c.signal(signal.SIGCONT))
    t0 = time.monotonic()
    limit = 3 * 1.0 + 1.0   # 3 heartbeats, and a margin for timer and scheduling slack
    s.wait_log(r"tunnel down peer=127\.0\.0\.1:\d+ reason=\".*silent", timeout=limit)
    for sock in socks:
        wait_closed(sock, max(0.1, limit - (time.monotonic() - t0)))
        sock.close()
    dt = time.monotonic() - t0
    assert dt >= 2.0, "tunnel declared dead after only %.1fs" % dt
    wait_until(lambda: refused(rp), 1, "port %d to be closed" % rp)

    c.signal(signal.SIGCONT)
    c.wait_log(r"tunnel down", timeout=10)
    c.wait_log(r"tunnel up", count=2, timeout=15)
    c.wait_log(r"mapping registered name=echo", count=2, timeout=5)
    assert echo_once(rp, b"thawed") == b"thawed"
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def heartbeat_agreed_on_the_larger(ctx):
    """Server heartbeat 1s, client 2s: both use 2s, so a frozen client is
    declared dead after about 6s, not 3s."""
    e = TcpServer(ctx, echo_handler)
    rp = free_port()
    s, c, _ = start_pair(ctx, tcp_mapping("echo", e.port, rp), server_extra=HB + "allow_ports = %d\n" % rp,
                         client_extra="heartbeat = 2s\n")
    sock = open_echo(rp)
    c.signal(signal.SIGSTOP)
    ctx.closers.append(lambda: c.signal(signal.SIGCONT))
    t0 = time.monotonic()
    s.wait_log(r"tunnel down .*silent", timeout=8)
    dt = time.monotonic() - t0
    assert 3.5 < dt < 7.5, "declared dead after %.1fs, want about 6s (3 x 2s)" % dt
    s.wait_log(r"heartbeat 2000ms", timeout=1)
    wait_closed(sock, 1)
    sock.close()
    c.signal(signal.SIGCONT)
    c.wait_log(r"tunnel up", count=2, timeout=15)
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def twin_clients_flapping_back_off(ctx):
    """Two clients with the same file on one host have the same client id:
    each tunnel replaces the other's as it comes up. The back-off goes on
    growing while tunnels die young (it was reset at every tunnel up, so
    they flapped every few hundred ms for ever)."""
    e = TcpServer(ctx, echo_handler)
    tport = free_port()
    s = Daemon(ctx, "server", server_ini(tport)).start()
    s.wait_log(r"listening for tunnels")
    text = client_ini(tport, HB, tcp_mapping("echo", e.port), reconnect=("100ms", "3s"))
    a = Daemon(ctx, "a", text).start()
    a.wait_log(r"tunnel up")
    b = Daemon(ctx, "b", text).start()
    time.sleep(10)
    ups = [len(log_lines(d.text(), r"tunnel up")) for d in (a, b)]
    late = [int(m.group(1)) for d in (a, b) for m in log_lines(d.text(), r"\(attempt (\d+)\)")]
    # 10 s of delays doubling from 100 ms to 3 s hold some 8 attempts a side
    assert max(ups) <= 12, (ups, a.text()[-1500:], b.text()[-1500:])
    assert late and max(late) >= 4, (late, a.text()[-1500:])
    assert a.stop() == 0 and b.stop() == 0


@test(timeout=60)
def reload_moves_a_connecting_client(ctx):
    """A reload that names another server while the client is still
    connecting to the old one (its SYNs unanswered: a full accept queue)
    goes to the new one at once (it used to wait for that connect, up to
    connect_timeout, and then reach the old address)."""
    import socket
    e = TcpServer(ctx, echo_handler)
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(0)
    ctx.closers.append(hold.close)
    filler = []
    for _ in range(4):          # fill the accept queue: later SYNs go unanswered
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", hold.getsockname()[1]))
        except BlockingIOError:
            pass
        filler.append(f)
        ctx.closers.append(f.close)
    tport = free_port()
    s = Daemon(ctx, "server", server_ini(tport)).start()
    s.wait_log(r"listening for tunnels")
    old = client_ini(hold.getsockname()[1], "connect_timeout = 30s\n", tcp_mapping("echo", e.port), tls=False)
    c = Daemon(ctx, "client", old).start()
    time.sleep(1)
    assert "tunnel up" not in c.text(), c.text()
    with open(c.conf, "w") as f:
        f.write(client_ini(tport, "connect_timeout = 30s\n", tcp_mapping("echo", e.port)))
    t0 = time.monotonic()
    c.signal(signal.SIGHUP)
    c.wait_log(r"tunnel up peer=127\.0\.0\.1:%d" % tport, timeout=10)
    assert time.monotonic() - t0 < 5, time.monotonic() - t0
    assert c.stop() == 0
