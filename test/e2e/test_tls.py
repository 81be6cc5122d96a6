"""TLS on the tunnel (server tc, client ts): what works, and every way it is
refused. A refused tunnel is logged on both sides with its cause, and the
client backs off and tries again.

These tests set TLS themselves (tls=False to the helpers, then their own
keys), so run.py runs them once; the other tunnel tests run in both modes."""
import os
import re
import signal

from lib import (WMPROXYD_REL, Daemon, TcpServer, cert_fingerprint, client_ini, echo_handler, echo_once, free_port,
                 log_lines, mkcerts, run, server_ini, tcp_mapping, test, wait_until)

TLS_ON = r"tls on 127\.0\.0\.1:%d certificate sha256=([0-9A-F:]{95})"
ATTEMPTS = 3        # refused this many times in a row, each one logged


def certs(ctx, name, server_name=None):
    """A fresh scripts/mkcerts directory: ca, server (for server_name,
    default localhost + 127.0.0.1) and client certificates."""
    return mkcerts(ctx.path(name), server_name)


def pem(d, f):
    return os.path.join(d, f)


def expired_server_cert(ctx, cadir):
    """A server certificate for localhost/127.0.0.1 signed by cadir's CA,
    valid only on 1 and 2 January 2020 (openssl ca takes dates in the past,
    openssl x509 -days does not). Returns (cert, key)."""
    d = ctx.path("expired")
    os.makedirs(os.path.join(d, "new"))
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("1000\n")
    cnf = ctx.write("expired/ca.cnf", "[ca]\ndefault_ca = old_ca\n[old_ca]\n"
                    "database = %s/index.txt\nnew_certs_dir = %s/new\nserial = %s/serial\n"
                    "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
                    % (d, d, d))
    ext = ctx.write("expired/ext", "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    key, csr, cert = pem(d, "server.key"), pem(d, "server.csr"), pem(d, "server.pem")
    r = run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=localhost", "-keyout", key, "-out", csr])
    assert r.returncode == 0, r.stderr.decode()
    r = run(["openssl", "ca", "-batch", "-notext", "-config", cnf, "-cert", pem(cadir, "ca.pem"),
             "-keyfile", pem(cadir, "ca.key"), "-in", csr, "-out", cert, "-extfile", ext,
             "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"])
    assert r.returncode == 0, r.stderr.decode()
    r = run(["openssl", "x509", "-in", cert, "-noout", "-checkend", "0"])
    assert r.returncode != 0, "the certificate made to be expired is not"
    return cert, key


def server(ctx, keys, name="server", extra=""):
    """A server with its own keys (TLS or not, as keys say) and a
    map_tcp_bind. Returns (daemon, tunnel port, public port)."""
    tport, pub = free_port(), free_port()
    s = Daemon(ctx, name, server_ini(tport, keys + "map_tcp_bind = 127.0.0.1:%d\n" % pub + extra,
                                     tls=False)).start()
    s.wait_log(r"listening for tunnels")
    return s, tport, pub


def client(ctx, tport, keys, svc_port, name="client"):
    return Daemon(ctx, name, client_ini(tport, keys, tcp_mapping("echo", svc_port), tls=False,
                                        reconnect=("100ms", "800ms"))).start()


def works(ctx, server_keys, client_keys):
    """The tunnel comes up with these keys and carries bytes both ways;
    both sides log that it runs TLS 1.3 with AES-128-GCM (offered first)."""
    e = TcpServer(ctx, echo_handler)
    s, tport, pub = server(ctx, server_keys)
    c = client(ctx, tport, client_keys, e.port)
    c.wait_log(r"mapping registered name=echo", timeout=15)
    up = r"(?m)tunnel up peer=127\.0\.0\.1:\d+ tls=TLSv1\.3 cipher=TLS_AES_128_GCM_SHA256$"
    s.wait_log(up)
    c.wait_log(up)
    assert echo_once(pub, b"through TLS") == b"through TLS"
    return s, c


def causes(text):
    """The distinct messages of a log, timestamps and ports removed: what an
    operator reads."""
    out = []
    for line in text.splitlines():
        m = re.sub(r"^\S+Z ", "", line)
        m = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:P", m)
        m = re.sub(r"in \d+ms \(attempt \d+\)", "in Nms (attempt N)", m)
        m = re.sub(r"/tmp/\S+", "TMP", m)
        if m not in out and "starting" not in m and "listening" not in m:
            out.append(m)
    return "\n    ".join(out)


def refused(ctx, server_keys, client_keys, server_rx, client_rx):
    """The tunnel is refused ATTEMPTS times in a row: the client logs each
    refusal with a cause matching client_rx and retries with growing attempt
    numbers; the server logs each with a cause matching server_rx. Neither
    side ever says "tunnel up"."""
    e = TcpServer(ctx, echo_handler)
    s, tport, _ = server(ctx, server_keys)
    c = client(ctx, tport, client_keys, e.port)
    c.wait_log(r"reconnecting to 127\.0\.0\.1:%d in \d+ms \(attempt %d\)" % (tport, ATTEMPTS), timeout=15)
    attempts = [int(m.group(1)) for m in log_lines(c.text(), r"reconnecting .* \(attempt (\d+)\)")]
    assert attempts[:ATTEMPTS] == list(range(1, ATTEMPTS + 1)), attempts
    problems = []
    # the server may log its side of the last attempt just after the client
    try:
        wait_until(lambda: len(log_lines(s.text(), server_rx)) >= ATTEMPTS, 3, "server")
    except AssertionError:
        problems.append("server: %d of %d refusals logged with /%s/" % (
            len(log_lines(s.text(), server_rx)), ATTEMPTS, server_rx))
    # the cause must be in the line that says the client will retry
    why = log_lines(c.text(), r"reconnecting .* \(attempt \d+\): (.*)")
    good = [m for m in why if re.search(client_rx, m.group(1))]
    if len(good) < ATTEMPTS:
        problems.append("client: %d of %d retries give a cause matching /%s/" % (len(good), ATTEMPTS, client_rx))
    for d in (s, c):
        if "tunnel up" in d.text():
            problems.append("%s: says tunnel up" % d.name)
    assert not problems, "%s\n  server logs:\n    %s\n  client logs:\n    %s" % (
        "\n".join(problems), causes(s.text()), causes(c.text()))
    assert c.stop() == 0
    assert s.stop() == 0


# ---- refused ----

@test(timeout=60)
def plaintext_client_on_tls_port(ctx):
    """ts = false against tc = true: the server says the peer does not speak
    TLS; the client should say the server does (set ts = true)."""
    refused(ctx, "tc = true\n", "",
            server_rx=r"(?i)not speaking TLS",
            client_rx=r"(?i)\btls\b|ts = true")


@test(timeout=60)
def tls_client_on_plain_port(ctx):
    """ts = true against a plain server: both sides should name TLS as
    the mismatch."""
    refused(ctx, "", "ts = true\nverify = false\n",
            server_rx=r"(?i)127\.0\.0\.1:\d+.*(\btls\b|tc = |ts = )",
            client_rx=r"(?i)not speaking TLS|\bplain|tc = ")


@test(timeout=60)
def unknown_ca(ctx):
    """The client trusts another CA than the one that signed the server."""
    a, b = certs(ctx, "a"), certs(ctx, "b")
    refused(ctx, "tc = true\ncert = %s\nkey = %s\n" % (pem(a, "server.pem"), pem(a, "server.key")),
            "ts = true\nca = %s\n" % pem(b, "ca.pem"),
            server_rx=r"(?i)unknown ca",
            client_rx=r"certificate verify failed: .*unknown CA: issuer .*wmproxy CA")


@test(timeout=60)
def wrong_pin(ctx):
    """The pin is the fingerprint of another certificate."""
    b = certs(ctx, "b")
    refused(ctx, "tc = true\n", "ts = true\nfingerprint = %s\n" % cert_fingerprint(pem(b, "server.pem")),
            server_rx=r"(?i)bad certificate|rejected .*certificate",
            client_rx=r"certificate fingerprint mismatch \(got [0-9A-F:]{95}\)")


@test(timeout=60)
def client_certificate_missing(ctx):
    """client_ca set, the client has no certificate: mutual TLS refused."""
    a = certs(ctx, "a")
    refused(ctx, "tc = true\ncert = %s\nkey = %s\nclient_ca = %s\n" % (
                pem(a, "server.pem"), pem(a, "server.key"), pem(a, "ca.pem")),
            "ts = true\nca = %s\n" % pem(a, "ca.pem"),
            server_rx=r"(?i)(sent no|no client|missing|without a) certificate",
            client_rx=r"(?i)certificate required|client certificate")


@test(timeout=60)
def client_certificate_from_other_ca(ctx):
    """The client's certificate is signed by a CA client_ca does not hold."""
    a, b = certs(ctx, "a"), certs(ctx, "b")
    refused(ctx, "tc = true\ncert = %s\nkey = %s\nclient_ca = %s\n" % (
                pem(a, "server.pem"), pem(a, "server.key"), pem(a, "ca.pem")),
            "ts = true\nca = %s\ncert = %s\nkey = %s\n" % (pem(a, "ca.pem"), pem(b, "client.pem"),
                                                          pem(b, "client.key")),
            server_rx=r"certificate verify failed: .*unknown CA: issuer .*wmproxy CA",
            client_rx=r"(?i)unknown ca")


@test(timeout=60)
def expired_server_certificate(ctx):
    a = certs(ctx, "a")
    cert, key = expired_server_cert(ctx, a)
    refused(ctx, "tc = true\ncert = %s\nkey = %s\n" % (cert, key), "ts = true\nca = %s\n" % pem(a, "ca.pem"),
            server_rx=r"(?i)certificate expired|expired certificate",
            client_rx=r"(?i)certificate has expired")


@test(timeout=60)
def server_name_mismatch(ctx):
    """The certificate is for tunnel.example, the client wants other.example."""
    a = certs(ctx, "a", "tunnel.example")
    refused(ctx, "tc = true\ncert = %s\nkey = %s\n" % (pem(a, "server.pem"), pem(a, "server.key")),
            "ts = true\nca = %s\nserver_name = other.example\n" % pem(a, "ca.pem"),
            server_rx=r"(?i)bad certificate|rejected .*certificate",
            client_rx=r"(?i)hostname mismatch.*other\.example|other\.example.*tunnel\.example")


# ---- accepted ----

@test(timeout=60)
def pinned_self_signed(ctx):
    """A generated certificate pinned by the fingerprint the server logged,
    given as plain lower-case hex (the other form the spec allows)."""
    e = TcpServer(ctx, echo_handler)
    s, tport, pub = server(ctx, "tc = true\n")
    fp = re.search(TLS_ON % tport, s.text()).group(1)
    c = client(ctx, tport, "ts = true\nfingerprint = %s\n" % fp.replace(":", "").lower(), e.port)
    c.wait_log(r"mapping registered name=echo", timeout=15)
    assert echo_once(pub, b"pinned") == b"pinned"
    assert "verification is off" not in c.text()
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def mutual_tls_accepted(ctx):
    """CA-verified server (name = the host of server, 127.0.0.1, in the
    certificate's IP SAN) and a client certificate from client_ca's CA."""
    a = certs(ctx, "a")
    s, c = works(ctx, "tc = true\ncert = %s\nkey = %s\nclient_ca = %s\n" % (
        pem(a, "server.pem"), pem(a, "server.key"), pem(a, "ca.pem")),
        "ts = true\nca = %s\ncert = %s\nkey = %s\n" % (pem(a, "ca.pem"), pem(a, "client.pem"), pem(a, "client.key")))
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def server_name_matches(ctx):
    """server_name names the certificate, not the address connected to."""
    a = certs(ctx, "a", "tunnel.example")
    s, c = works(ctx, "tc = true\ncert = %s\nkey = %s\n" % (pem(a, "server.pem"), pem(a, "server.key")),
                 "ts = true\nca = %s\nserver_name = tunnel.example\n" % pem(a, "ca.pem"))
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=60)
def verify_off_warns_at_every_connect(ctx):
    """verify = false works, and says so at each connect: again after the
    server restarts (with a new generated certificate) and the client
    reconnects."""
    warn = r"WARN .*verif.*(off|disabled|false)"
    e = TcpServer(ctx, echo_handler)
    s, tport, pub = server(ctx, "tc = true\n")
    c = client(ctx, tport, "ts = true\nverify = false\n", e.port)
    c.wait_log(r"mapping registered name=echo", timeout=15)
    c.wait_log(warn, timeout=1)
    assert echo_once(pub, b"unverified") == b"unverified"
    assert s.stop() == 0
    c.wait_log(r"reconnecting", timeout=5)
    s2 = Daemon(ctx, "server2", server_ini(tport, "tc = true\nmap_tcp_bind = 127.0.0.1:%d\n" % pub,
                                           tls=False)).start()
    c.wait_log(r"mapping registered name=echo", count=2, timeout=15)
    n_up, n_warn = len(log_lines(c.text(), r"tunnel up")), len(log_lines(c.text(), warn))
    assert n_up == 2 and n_warn >= 2, "%d tunnels up, %d warnings:\n%s" % (n_up, n_warn, c.text())
    assert echo_once(pub, b"again") == b"again"
    assert c.stop() == 0
    assert s2.stop() == 0


@test(timeout=60)
def generated_certificate_fingerprint_logged(ctx):
    """tc = true without cert: the fingerprint logged at start-up is the one
    openssl s_client sees in a TLS 1.3 handshake; a restart makes a new
    certificate."""
    s, tport, _ = server(ctx, "tc = true\n")
    m = re.search(TLS_ON % tport + r".*generated, self-signed", s.text())
    assert m, s.text()
    logged = m.group(1)
    assert s.text().index("tls on") < s.text().index("listening for tunnels"), s.text()

    r = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % tport, "-servername", "wmproxyd"],
            input=b"", timeout=20)
    out = r.stdout.decode("utf-8", "replace")
    assert re.search(r"(?m)^New, TLSv1\.3, Cipher is TLS_", out), out + r.stderr.decode()
    seen = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", out, re.S).group(0)
    r = run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=seen.encode())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip().split("=", 1)[1] == logged, (r.stdout, logged)
    assert s.proc.poll() is None, "server died after an s_client handshake"
    assert s.stop() == 0

    s2 = Daemon(ctx, "server2", server_ini(tport, "tc = true\n", tls=False)).start()
    s2.wait_log(r"listening for tunnels")
    assert re.search(TLS_ON % tport, s2.text()).group(1) != logged, "a restart kept the generated certificate"
    assert s2.stop() == 0


@test(timeout=60)
def generated_certificate_kept_when_client_ca_changes(ctx):
    """A reload that adds client_ca to a server with a generated
    certificate keeps that certificate (clients pin its fingerprint)."""
    d = mkcerts(ctx.path("certs"))
    tport = free_port()
    s = Daemon(ctx, "server", server_ini(tport, "", tls=True)).start()
    s.wait_log(TLS_ON % tport)
    first = re.findall(TLS_ON % tport, s.text())[-1]
    with open(s.conf, "w") as f:
        f.write(server_ini(tport, "client_ca = %s/ca.pem\n" % d, tls=True))
    s.signal(signal.SIGHUP)
    s.wait_log(r"reloaded")
    assert re.findall(TLS_ON % tport, s.text())[-1] == first, s.text()
    assert s.stop() == 0


def rewrite(dst, src):
    """Put src's bytes into dst in place (same path, same inode), as a
    renewal script that overwrites the file does."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "r+b") as f:
        f.truncate(0)
        f.write(data)


@test(timeout=60)
def reload_reads_rewritten_certificate_files(ctx):
    """HUP reads certificate files again even when their paths did not
    change: a server with a generated certificate whose client_ca file was
    rewritten with another CA, and then a client whose cert and key files
    were rewritten with ones from the CA the server trusts, each get the
    tunnel up after their reload. Before, both kept the contexts of the old
    files until a restart."""
    a, b = certs(ctx, "a"), certs(ctx, "b")
    ca = ctx.path("client-ca.pem")
    ccert, ckey = ctx.path("client.pem"), ctx.path("client.key")
    for dst, src in ((ca, pem(b, "ca.pem")), (ccert, pem(a, "client.pem")), (ckey, pem(a, "client.key"))):
        open(dst, "w").close()
        rewrite(dst, src)
    e = TcpServer(ctx, echo_handler)
    s, tport, pub = server(ctx, "tc = true\nclient_ca = %s\n" % ca)
    fp = re.search(TLS_ON % tport, s.text()).group(1)
    c = client(ctx, tport, "ts = true\nfingerprint = %s\ncert = %s\nkey = %s\n" % (fp, ccert, ckey), e.port)
    c.wait_log(r"reconnecting to .* \(attempt 2\)", timeout=15)    # a's client, b's CA: refused
    rewrite(ca, pem(a, "ca.pem"))
    s.signal(signal.SIGHUP)
    s.wait_log(r"reloaded")
    c.wait_log(r"mapping registered name=echo", timeout=15)
    assert re.findall(TLS_ON % tport, s.text())[-1] == fp      # the generated certificate stays
    assert echo_once(pub, b"one") == b"one"
    assert c.stop() == 0

    rewrite(ca, pem(b, "ca.pem"))                                # now b's clients only
    s.signal(signal.SIGHUP)
    s.wait_log(r"reloaded", count=2)
    c = client(ctx, tport, "ts = true\nfingerprint = %s\ncert = %s\nkey = %s\n" % (fp, ccert, ckey), e.port,
               name="client2")
    c.wait_log(r"reconnecting to .* \(attempt 2\)", timeout=15)
    rewrite(ccert, pem(b, "client.pem"))
    rewrite(ckey, pem(b, "client.key"))
    c.signal(signal.SIGHUP)
    c.wait_log(r"reloaded")
    c.wait_log(r"mapping registered name=echo", timeout=15)
    assert echo_once(pub, b"two") == b"two"
    assert c.stop() == 0
    assert s.stop() == 0


@test(timeout=120)
def reloads_with_certificate_files_do_not_grow(ctx):
    """Each reload with cert and map_cert builds new TLS contexts; the old
    ones go once no connection uses them: 150 reloads leave the server's
    private memory within 1 MiB of where it was (it grew about 68 KiB a
    reload when they were kept forever)."""
    d = mkcerts(ctx.path("certs"))
    tport, hp = free_port(), free_port()
    extra = ("cert = %s/server.pem\nkey = %s/server.key\nmap_https_bind = 127.0.0.1:%d\n"
             "map_cert = %s/server.pem\nmap_key = %s/server.key\n" % (d, d, hp, d, d))
    s = Daemon(ctx, "server", server_ini(tport, extra, tls=True), binary=WMPROXYD_REL).start()
    s.wait_log(r"listening for tunnels")
    for i in range(1, 11):
        s.signal(signal.SIGHUP)
        s.wait_log(r"reloaded", count=i)
    base = s.status("RssAnon")
    for i in range(11, 161):
        s.signal(signal.SIGHUP)
        s.wait_log(r"reloaded", count=i)
    grown = s.status("RssAnon") - base
    print("    150 reloads: RssAnon %+d kB" % grown)
    assert grown < 1024, "RssAnon grew %d kB over 150 reloads" % grown
    assert s.stop() == 0

