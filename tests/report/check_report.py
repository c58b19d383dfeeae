#!/usr/bin/env python3
"""Opens a `tracemesh report --html` page in headless Chromium and checks it.

Drives Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe: no port,
no third-party client), with every host name unresolvable. Checks, against the run's
`diversions.json`:

- one drawn diverted path (`#map path.diverted`, non-empty `d`) per diverted
  (vantage, target) pair, and one ingress marker (`#map circle.ingress`) per incident;
- no console error, no uncaught exception, no failed load;
- no network request: every request the page makes must be the report's own file:// URL
  or a data: URL (and the page's performance entries must name no resource);
- a screenshot that is not blank (written with --screenshot).

Prints one JSON line with the figures; exits 1 with the reasons when a check fails.

    check_report.py REPORT.html --diversions diversions.json [--screenshot out.png]
    check_report.py http://127.0.0.1:PORT/ --diversions diversions.json   (a live view)
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib


class Cdp:
    """The DevTools protocol over Chromium's pipe: NUL-terminated JSON both ways."""

    def __init__(self, proc, rd, wr):
        self.proc, self.rd, self.wr = proc, rd, wr
        self.next_id = 0
        self.buf = b""
        self.events = []

    def _read_message(self, deadline):
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.rd, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wr, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == mid:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method, timeout=60):
        deadline = time.monotonic() + timeout
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._read_message(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    sys.exit("check_report: no chromium on PATH (apt-get install chromium)")


def png_pixels(data):
    """(width, height, rows of RGBA/RGB bytes) of an 8-bit PNG: enough to judge blankness."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            if depth != 8 or ctype not in (2, 6):
                raise ValueError(f"unexpected PNG depth {depth} colour type {ctype}")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        f = raw[i]
        line = bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pr) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def blankness(png):
    """Distinct colours and the share of pixels unlike the commonest one (sampled)."""
    w, h, bpp, rows = png_pixels(png)
    counts = {}
    n = 0
    for y in range(0, h, 2):
        row = rows[y]
        for x in range(0, w, 2):
            px = row[x * bpp : x * bpp + 3]
            counts[px] = counts.get(px, 0) + 1
            n += 1
    top = max(counts.values()) if counts else 0
    return {"width": w, "height": h, "colours": len(counts), "non_background_share": 1 - top / max(n, 1)}


def expected(diversions_path):
    with open(diversions_path) as f:
        d = json.load(f)
    pairs = {(r["vantage"], r["target"]) for r in d.get("diversions", [])}
    single = sum(1 for i in d.get("incidents", []) if not i.get("corroborated", False))
    return len(pairs), len(d.get("incidents", [])), single


DOM_PROBE = """(() => {
  const div = [...document.querySelectorAll('#map path.diverted')].filter(p => (p.getAttribute('d') || '').length > 1);
  return JSON.stringify({
    rendered: document.body.getAttribute('data-rendered') === 'true',
    diverted_paths: div.length,
    distinct_pairs: new Set(div.map(p => p.getAttribute('data-pair'))).size,
    normal_paths: document.querySelectorAll('#map path.normal').length,
    ingress_markers: document.querySelectorAll('#map circle.ingress').length,
    ingress_markers_approx: document.querySelectorAll('#map circle.ingress.approx').length,
    uncertainty_circles: document.querySelectorAll('#map path.uncertainty').length,
    handoff_markers: document.querySelectorAll('#map path.handoff').length,
    vantages: document.querySelectorAll('#map circle.vantage').length,
    incidents: document.querySelectorAll('section.incident').length,
    uncorroborated: document.querySelectorAll('section.incident .uncorroborated').length,
    timeline_bars: document.querySelectorAll('svg.timeline-svg rect.bar').length,
    hop_tables: document.querySelectorAll('table.hops').length,
    land: (document.querySelector('#map path.land')?.getAttribute('d') || '').length,
    resources: performance.getEntriesByType('resource').map(e => e.name),
  });
})()"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--diversions", required=True, help="the run's diversions.json")
    ap.add_argument("--screenshot", help="write the screenshot here (PNG)")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    # A live view (`serve --http`) is checked at its URL; it may talk to its own origin.
    if a.report.startswith("http://"):
        report, url = None, a.report
        origin = "/".join(url.split("/")[:3]) + "/"
    else:
        report = os.path.abspath(a.report)
        url = origin = "file://" + report
    want_pairs, want_incidents, want_single = expected(a.diversions)

    profile = tempfile.mkdtemp(prefix="tm-report-chromium-")
    args = [
        find_chromium(),
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        # Every name unresolvable; a live view's own loopback address stays reachable.
        "--host-resolver-rules=MAP * ~NOTFOUND" + (", EXCLUDE " + url.split("/")[2].split(":")[0] if report is None else ""),
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1400,1000",
        "about:blank",
    ]
    log_path = os.path.join(profile, "chromium.log")

    def launch():
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()

        def fds():
            # Chromium reads commands on fd 3 and writes answers on fd 4. Through spare
            # numbers first: the pipes may themselves be 3..6.
            r, w = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                args, preexec_fn=fds, pass_fds=(3, 4),
                stdout=subprocess.DEVNULL, stderr=log,
            )
        os.close(to_child_r)
        os.close(from_child_w)
        return proc, Cdp(proc, from_child_r, to_child_w)

    def log_tail():
        try:
            with open(log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return ""

    failures = []
    # A browser that dies while starting (seen about once in twenty starts on a loaded
    # machine) is started again, twice at most; what it logged is kept for the error.
    for attempt in range(3):
        proc, cdp = launch()
        try:
            target = cdp.call("Target.createTarget", {"url": "about:blank"}, timeout=30)["targetId"]
            break
        except (RuntimeError, TimeoutError) as e:
            proc.kill()
            proc.wait()
            if attempt == 2:
                shutil.rmtree(profile, ignore_errors=True)
                sys.exit(f"check_report: Chromium did not start ({e}): {log_tail()}")
            print(f"check_report: Chromium did not start ({e}); again", file=sys.stderr)
            # The dead browser's profile lock would stop the next one.
            for n in ("SingletonLock", "SingletonSocket", "SingletonCookie"):
                try:
                    os.unlink(os.path.join(profile, n))
                except OSError:
                    pass
    try:
        s = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for dom in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{dom}.enable", session=s)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=s)
        t0 = time.monotonic()
        nav = cdp.call("Page.navigate", {"url": url}, session=s)
        if nav.get("errorText"):
            failures.append(f"navigation failed: {nav['errorText']}")
        cdp.wait_event("Page.loadEventFired", timeout=a.timeout)
        load_s = time.monotonic() - t0
        deadline = time.monotonic() + a.timeout
        while True:
            probe = json.loads(cdp.call("Runtime.evaluate", {"expression": DOM_PROBE, "returnByValue": True},
                                        session=s)["result"]["value"])
            if probe["rendered"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        render_s = time.monotonic() - t0
        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session=s)
        import base64
        png = base64.b64decode(shot["data"])
        if a.screenshot:
            with open(a.screenshot, "wb") as f:
                f.write(png)
        blank = blankness(png)
        # Late events (console errors after rendering) arrive with the next answer.
        cdp.call("Runtime.evaluate", {"expression": "1"}, session=s)
        requests, console = [], []
        for m in cdp.events:
            meth, p = m.get("method"), m.get("params", {})
            if meth == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
            elif meth == "Network.loadingFailed":
                console.append(f"load failed: {p.get('errorText')}")
            elif meth == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                console.append("console." + p["type"] + ": " + " ".join(
                    str(x.get("value", x.get("description", ""))) for x in p.get("args", [])))
            elif meth == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                console.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
            elif meth == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                console.append("log: " + p["entry"].get("text", ""))
        foreign = [u for u in requests
                   if u != url and not u.startswith("data:") and not (report is None and u.startswith(origin))]
        if not probe["rendered"]:
            failures.append("the page never finished drawing (body[data-rendered] unset)")
        if foreign:
            failures.append(f"network requests: {foreign[:5]}")
        if report is None:
            probe["resources"] = [u for u in probe["resources"] if not u.startswith(origin)]
        if probe["resources"]:
            failures.append(f"resources loaded: {probe['resources'][:5]}")
        if console:
            failures.append(f"console errors: {console[:5]}")
        if probe["diverted_paths"] != want_pairs or probe["distinct_pairs"] != want_pairs:
            failures.append(f"{probe['diverted_paths']} diverted paths drawn ({probe['distinct_pairs']} pairs), "
                            f"{want_pairs} diverted pairs in diversions.json")
        if probe["ingress_markers"] != want_incidents:
            failures.append(f"{probe['ingress_markers']} ingress markers, {want_incidents} incidents")
        # One-vantage incidents say so on the page, as the text view does.
        if probe["uncorroborated"] != want_single:
            failures.append(f"{probe['uncorroborated']} incidents marked not corroborated, "
                            f"{want_single} seen by one vantage only")
        if probe["land"] < 1000:
            failures.append("no world map drawn")
        if blank["colours"] < 8 or blank["non_background_share"] < 0.05:
            failures.append(f"screenshot looks blank: {blank}")
        del probe["resources"], probe["rendered"]
        out = {
            "report": a.report,
            "report_bytes": os.path.getsize(report) if report else None,
            "load_s": round(load_s, 3),
            "rendered_s": round(render_s, 3),
            "requests": len(requests),
            "foreign_requests": len(foreign),
            "console_errors": len(console),
            "expected_pairs": want_pairs,
            "expected_incidents": want_incidents,
            "expected_uncorroborated": want_single,
            **probe,
            "screenshot": blank,
            "ok": not failures,
        }
        print(json.dumps(out))
        try:
            cdp.call("Browser.close", timeout=10)
        except Exception:
            pass
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    if failures:
        for f in failures:
            print(f"check_report: {a.report}: {f}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
