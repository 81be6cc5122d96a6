#!/usr/bin/env python3
"""Run the end-to-end tests: every test_*.py here, each test in a temp dir
of its own under a timeout. Prints one line per test and a summary; with
--summary-file writes "PASSED FAILED" there for scripts/check.

Tunnels are tested with TLS off and on: a first pass runs every test with
TLS off, then each test that built its tunnel with a mode-aware helper of
lib (start_pair, server_ini, client_ini) runs again with TLS on, reported as
"NAME [tls]" and counted on its own. --tls off|on (or WMPX_TLS=0|1) runs one
mode only."""
import argparse
import glob
import importlib.util
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib  # noqa: E402


class Timeout(Exception):
    pass


# a sanitizer report in any daemon's log fails the test, even when the test
# did not look at the exit status (UBSan carries on after "runtime error")
SANITIZER = re.compile(r"ERROR: \w+Sanitizer|runtime error:|SUMMARY: \w+Sanitizer")


def sanitizer_reports(tmp):
    found = []
    for p in sorted(glob.glob(os.path.join(tmp, "*.log"))):
        with open(p, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        m = SANITIZER.search(text)
        if m:
            found.append("%s: %s" % (os.path.basename(p), text[max(0, m.start() - 200):m.start() + 1500]))
    return found


# For emulated runs (scripts/check-cross: the daemon under qemu-user):
# WMPX_TIMEOUT_SCALE multiplies every test's timeout; WMPX_SKIP is a
# ";"-separated list of "NAME_PART=reason" skipping the tests whose name
# ("BASE" or "BASE [tls]") contains NAME_PART, with the reason printed.
TIMEOUT_SCALE = float(os.environ.get("WMPX_TIMEOUT_SCALE") or 1)


def env_skip(ctx, base, tls):
    name = base + " [tls]" if tls else base
    for item in os.environ.get("WMPX_SKIP", "").split(";"):
        part, _, why = item.partition("=")
        if part.strip() and part.strip() in name:
            ctx.mode_used = tls     # report it under the name it matched
            raise lib.Skip("WMPX_SKIP: %s" % (why.strip() or "skipped"))


def on_alarm(signo, frame):
    raise Timeout()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--summary-file")
    ap.add_argument("-k", help="run only tests whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep temp dirs of failed tests")
    env = os.environ.get("WMPX_TLS", "").lower()
    ap.add_argument("--tls", choices=("both", "off", "on"),
                    default="on" if env in ("1", "on", "yes", "true") else
                    "off" if env in ("0", "off", "no", "false") else "both",
                    help="TLS mode of the tunnel tests (default both, or WMPX_TLS=0|1)")
    a, _ = ap.parse_known_args()
    here = os.path.dirname(os.path.abspath(__file__))
    # WMPX_E2E_FILES: which test files (globs), e.g. scripts/check-cross
    pats = os.environ.get("WMPX_E2E_FILES", "test_*.py").split()
    for f in sorted({p for pat in pats for p in glob.glob(os.path.join(here, pat))}):
        spec = importlib.util.spec_from_file_location(os.path.basename(f)[:-3], f)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
    signal.signal(signal.SIGALRM, on_alarm)
    passed = failed = skipped = 0
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[a.tls]
    ran = set()        # tests run in the plain pass
    tunnel = set()     # ... that followed the mode: run again with TLS
    pass_time = {}
    for tls in modes:
        lib.set_tls(tls)
        t_pass = time.monotonic()
        for fn, timeout in lib.TESTS:
            base = "%s.%s" % (fn.__module__, fn.__name__)
            name = base + " [tls]" if tls else base
            if tls and base in ran and base not in tunnel:
                continue    # builds no tunnel: the plain pass covered it
            if a.k and a.k not in name and a.k not in base:
                continue
            r = run_one(fn, timeout, base, tls, a)
            if r is None:
                continue
            p, f, s_, used = r
            if not tls:
                ran.add(base)
                if used:
                    tunnel.add(base)
            passed += p
            failed += f
            skipped += s_
        pass_time["tls" if tls else "plain"] = time.monotonic() - t_pass
    print("e2e: %d passed, %d failed, %d skipped (%s)" % (passed, failed, skipped, ", ".join(
        "%s pass %.0fs" % kv for kv in pass_time.items())), flush=True)
    if a.summary_file:
        with open(a.summary_file, "w") as f:
            f.write("%d %d\n" % (passed, failed))
    return 1 if failed else 0


def run_one(fn, timeout, base, tls, a):
    """Run one test (as "BASE [tls]" when tls and it followed the mode).
    Returns (passed, failed, skipped, followed the mode), or None when, on
    the TLS pass, a test -k picked by its "[tls]" name builds no tunnel."""
    tmp = tempfile.mkdtemp(prefix="wmpx-")
    ctx = lib.Ctx(tmp)
    t0 = time.monotonic()
    err = None
    signal.alarm(max(1, round(timeout * TIMEOUT_SCALE)))
    try:
        env_skip(ctx, base, tls)
        fn(ctx)
    except lib.Skip as e:
        err = "skip: %s" % e
    except Timeout:
        err = "timed out after %ds" % timeout
    except BaseException:
        err = traceback.format_exc()
    finally:
        signal.alarm(0)
        try:
            signal.alarm(30)
            ctx.cleanup()
        except Timeout:
            pass
        signal.alarm(0)
    name = base + " [tls]" if tls and ctx.mode_used else base
    if a.k and a.k not in name:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    skip = err is not None and err.startswith("skip: ")
    if not skip:
        reports = sanitizer_reports(tmp)
        if reports:
            err = (err or "") + "sanitizer report in a daemon log:\n" + "\n".join(reports)
    dt = time.monotonic() - t0
    if skip:
        print("SKIP %s: %s" % (name, err[6:]), flush=True)
    elif err:
        print("FAIL %s (%.1fs)\n%s" % (name, dt, err), flush=True)
        for p in sorted(glob.glob(os.path.join(tmp, "*.log"))):
            with open(p, "rb") as f:
                print("--- %s (last 2000 bytes) ---\n%s" % (os.path.basename(p), f.read()[-2000:].decode(
                    "utf-8", "replace")), flush=True)
    else:
        print("ok   %s (%.1fs)" % (name, dt), flush=True)
    if not (err and not skip and a.keep):
        shutil.rmtree(tmp, ignore_errors=True)
    return (int(not err), int(bool(err) and not skip), int(skip), ctx.mode_used)


if __name__ == "__main__":
    sys.exit(main())
