"""Command line and configuration file errors, as an operator meets them:
exit status, and "FILE:LINE: message" on stderr naming the right line."""
import os
import re
import socket
import subprocess

from lib import ROOT, WMPROXYD, free_port, run, server_ini, test

GOOD = "[server]\nbind_addr = 127.0.0.1:8091\n"
CLIENT = "[client]\nserver = 127.0.0.1:8091\n"
MAP = "[mapping web]\nmode = tcp\nlocal_addr = 127.0.0.1:8080\n"

# (name, file text, line the error must name (None: any), pattern of the message)
BAD = [
    ("unknown_key", GOOD + "; a comment\nfoo = 1\n", 4, r"unknown key 'foo'"),
    ("unknown_key_client", CLIENT + "\n" + MAP + "colour = red\n", 7, r"unknown key 'colour'"),
    ("unknown_section", GOOD + "\n[bogus]\n", 4, r"unknown section \[bogus\]"),
    ("bad_duration", GOOD + "heartbeat = 5x\n", 3, r"bad duration '5x' for heartbeat"),
    ("bad_duration_neg", CLIENT + "reconnect_min = -1s\n", 3, r"bad duration '-1s' for reconnect_min"),
    ("bad_size", GOOD + "# window\nwindow = lots\n", 4, r"bad size 'lots' for window"),
    ("bad_bool", GOOD + "tc = maybe\n", 3, r"bad boolean 'maybe' for tc"),
    ("bad_address_noport", "[server]\nbind_addr = 127.0.0.1\n", 2, r"bad address '127\.0\.0\.1' for bind_addr"),
    ("bad_address_port", "; x\n[server]\nbind_addr = 127.0.0.1:99999\n", 3, r"bad address .* for bind_addr"),
    ("bad_address_mapping", CLIENT + MAP.replace("127.0.0.1:8080", "nowhere"), 5,
     r"bad address 'nowhere' for local_addr"),
    ("missing_bind_addr", "; comment\n\n[server]\nheartbeat = 1s\n", 3, r"missing required key 'bind_addr'"),
    ("missing_server", "[client]\nts = false\n\n" + MAP, 1, r"missing required key 'server'"),
    ("missing_local_addr", CLIENT + "\n[mapping a]\nmode = tcp\n", 4,
     r"missing required key 'local_addr' in \[mapping a\]"),
    ("missing_mode", CLIENT + "[mapping a]\nlocal_addr = 127.0.0.1:1\n", 3, r"missing required key 'mode'"),
    ("both_roles", GOOD + "\n[client]\nserver = 127.0.0.1:1\n", 4, r"\[client\].*\[server\]"),
    ("both_roles_rev", CLIENT + "[server]\nbind_addr = 127.0.0.1:1\n", 3, r"\[server\].*\[client\]"),
    ("neither_role", "; nothing here\nlog_level = info\n", None, r"section"),
    ("neither_role_empty", "; only a comment\n", None, r"no \[server\] or \[client\]"),
    ("duplicate_mapping", CLIENT + MAP + "\n" + MAP, 7, r"duplicate \[mapping web\].*line 3"),
    ("mapping_in_server", GOOD + "\n" + MAP, 4, r"\[mapping web\] in a server file"),
    ("repeated_key", GOOD + "heartbeat = 1s\n\nheartbeat = 2s\n", 5, r"duplicate key 'heartbeat'.*line 3"),
    ("repeated_key_mapping", CLIENT + MAP + "mode = udp\n", 6, r"duplicate key 'mode'.*line 4"),
    # -t loads the TLS files as start-up would
    ("cert_missing", GOOD + "tc = true\ncert = nope.pem\nkey = nope.key\n", 4, r"cert .*/nope\.pem: No such file"),
    ("ca_not_pem", CLIENT + "ts = true\n\nca = ca_not_pem.ini\n", 5, r"ca .*/ca_not_pem\.ini: "),
    ("map_cert_not_pem", GOOD + "map_https_bind = 127.0.0.1:8443\nmap_cert = map_cert_not_pem.ini\n"
     "map_key = map_cert_not_pem.ini\n", 4, r"cert .*/map_cert_not_pem\.ini: "),
    ("client_ca_without_tc", GOOD + "client_ca = ca.pem\n", 3, r"client_ca needs tc = true"),
    ("fingerprint_without_ts", CLIENT + "fingerprint = " + "ab" * 32 + "\n", 3, r"fingerprint needs ts = true"),
    ("comment_after_value", GOOD + "heartbeat = 5s # five\nwindow = 64k ; sixty-four\nmax_window = x#y\n", 5,
     r"bad size 'x#y' for max_window"),
]


def check(path):
    r = run([WMPROXYD, "-t", "-f", path], timeout=20)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


@test(timeout=60)
def check_shipped_examples(ctx):
    for name in ("server.ini", "client.ini"):
        p = os.path.join(ROOT, "conf", name)
        rc, out, err = check(p)
        assert rc == 0, "%s: rc=%d stderr=%r" % (name, rc, err)
        assert not re.search(r":\d+: ", err), err


@test(timeout=120)
def config_errors_name_file_and_line(ctx):
    problems = []
    for name, text, line, msg in BAD:
        p = ctx.write(name + ".ini", text)
        rc, out, err = check(p)
        first = err.strip().splitlines()[0] if err.strip() else ""
        where = re.escape(p) + ":" + (str(line) if line else r"\d+") + ": "
        if rc != 1:
            problems.append("%s: exit %d, want 1 (stderr %r)" % (name, rc, err))
        elif not re.match(where, first):
            problems.append("%s: want '%s:%s: ...' got %r" % (name, p, line, first))
        elif not re.search(msg, first, re.I):
            problems.append("%s: message %r does not match /%s/" % (name, first, msg))
    assert not problems, "\n".join(problems)


@test(timeout=30)
def version_help_bad_option(ctx):
    r = run([WMPROXYD, "-v"])
    out = r.stdout.decode()
    assert r.returncode == 0, r
    assert re.match(r"wmproxyd \d+\.\d+\S*\n", out), out
    assert re.search(r"OpenSSL \d+\.\d+", out), out
    r = run([WMPROXYD, "-h"])
    assert r.returncode == 0, r
    assert r.stdout.decode().startswith("usage: wmproxyd"), r.stdout
    assert "-f FILE" in r.stdout.decode() and r.stderr == b""
    for bad in (["-x"], ["-f"], ["-t", "-f", "/dev/null", "extra"]):
        r = run([WMPROXYD] + bad)
        assert r.returncode == 1, (bad, r)
        assert b"usage: wmproxyd" in r.stderr, (bad, r.stderr)
        assert r.stdout == b"", (bad, r.stdout)


@test(timeout=30)
def missing_file_exits_1(ctx):
    p = ctx.path("nope.ini")
    rc, out, err = check(p)
    assert rc == 1 and p in err, (rc, err)


@test(timeout=30)
def bind_taken_exits_2(ctx):
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(1)
    ctx.closers.append(hold.close)
    port = hold.getsockname()[1]
    p = ctx.write("server.ini", server_ini(port))
    proc = subprocess.Popen([WMPROXYD, "-f", p], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ctx.procs.append(proc)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("server started although port %d is taken" % port)
    assert proc.returncode == 2, (proc.returncode, err)
    assert ("bind 127.0.0.1:%d: Address already in use" % port).encode() in err, err
    # a mapping listener taken is a start-up failure too
    p = ctx.write("server2.ini", server_ini(free_port(), "map_tcp_bind = 127.0.0.1:%d\n" % port))
    proc = subprocess.Popen([WMPROXYD, "-f", p], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ctx.procs.append(proc)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("server started although map_tcp_bind port %d is taken" % port)
    assert proc.returncode == 2, (proc.returncode, err)
    assert ("bind 127.0.0.1:%d: Address already in use" % port).encode() in err, err
