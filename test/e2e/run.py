#!/usr/bin/env python3
"""Run the end-to-end tests: every test_*.py here, each test in a temp dir
of its own under a timeout. Prints one line per test and a summary; with
--summary-file writes "PASSED FAILED" there for scripts/check."""
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


def on_alarm(signo, frame):
    raise Timeout()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--summary-file")
    ap.add_argument("-k", help="run only tests whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep temp dirs of failed tests")
    a, _ = ap.parse_known_args()
    here = os.path.dirname(os.path.abspath(__file__))
    for f in sorted(glob.glob(os.path.join(here, "test_*.py"))):
        spec = importlib.util.spec_from_file_location(os.path.basename(f)[:-3], f)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
    signal.signal(signal.SIGALRM, on_alarm)
    passed = failed = skipped = 0
    for fn, timeout in lib.TESTS:
        name = "%s.%s" % (fn.__module__, fn.__name__)
        if a.k and a.k not in name:
            continue
        tmp = tempfile.mkdtemp(prefix="wmpx-")
        ctx = lib.Ctx(tmp)
        t0 = time.monotonic()
        err = None
        signal.alarm(timeout)
        try:
            fn(ctx)
        except lib.Skip as e:
            err = "skip"
            print("SKIP %s: %s" % (name, e), flush=True)
            skipped += 1
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
        if err != "skip":
            reports = sanitizer_reports(tmp)
            if reports:
                err = (err or "") + "sanitizer report in a daemon log:\n" + "\n".join(reports)
        dt = time.monotonic() - t0
        if err == "skip":
            pass
        elif err:
            failed += 1
            print("FAIL %s (%.1fs)\n%s" % (name, dt, err), flush=True)
            for p in glob.glob(os.path.join(tmp, "*.log")):
                with open(p, "rb") as f:
                    print("--- %s (last 2000 bytes) ---\n%s" % (os.path.basename(p), f.read()[-2000:].decode(
                        "utf-8", "replace")), flush=True)
        else:
            passed += 1
            print("ok   %s (%.1fs)" % (name, dt), flush=True)
        if not (err and a.keep):
            shutil.rmtree(tmp, ignore_errors=True)
    print("e2e: %d passed, %d failed, %d skipped" % (passed, failed, skipped), flush=True)
    if a.summary_file:
        with open(a.summary_file, "w") as f:
            f.write("%d %d\n" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
