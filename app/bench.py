"""Compare's latency as a user sees it: ``python -m app.bench``.

Starts the app (``python -m app.app``) in its own process on a free port, waits until ``--wait``
seconds after the start (the background warm-up runs meanwhile, as for a user opening the page),
then drives Compare through its HTTP API with ``gradio_client``, family by family in the dropdown's
order, each at its default view (all classes, seed 0, the default number of samples, the teacher's
CFG, the default step choice):

* **first click**: the first request of that view: seconds to the first panel and to every panel
  (the last update), the panels' files downloaded, as the page gets them;
* **repeated click**: the same request again, ``--repeats`` times (the median is reported);
* **Diversity's full evaluation**: right after the first family's first click, the Diversity tab's default
  request with "full evaluation" ticked (its default models and samples, scored against the 50-step
  teacher), as a user trying the next tab; seconds until its figure and table arrive.

``--no-warm-up`` starts the app without its background warm-up: every first click is then cold.

Writes :data:`OUTPUTS` (the results and their table) into ``--out`` (kept unless ``--overwrite``)
and prints the table. The app process is stopped at the end. Nothing here is timed inside the app:
these are wall-clock times on the machine it runs on, so say what else ran beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("latency.json", "latency.md")  # what the bench writes into --out: the results and their table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the app did not serve {url} within {timeout:.0f} s")


def _dropdowns(url: str) -> dict[str, list[str]]:
    """``elem_id -> choices`` of the running app's dropdowns, from its page config (nothing loaded here):
    ``family-dd`` is Compare's family list, ``diversity-family`` the Diversity tab's."""
    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    return {c["props"]["elem_id"]: [ch[1] if isinstance(ch, (list, tuple)) else ch for ch in c["props"]["choices"]]
            for c in config["components"] if c.get("props", {}).get("elem_id") and "choices" in c["props"]}


def _defaults(client, family: str) -> tuple:
    """The default Compare request of ``family``, (class, seed, n, cfg, steps), as the page fills it in when
    the family is picked (the app's ``/compare_controls``)."""
    steps, count, cfg, klass = client.predict(family, api_name="/compare_controls")[:4]
    return klass["value"], 0, count["value"], cfg["value"], steps["value"]


def _panel_urls(update) -> list[str]:
    return [v["url"] for v in update[:6] if isinstance(v, dict) and v.get("url")]


def click(client, family: str, request: tuple, http) -> dict:
    """One Generate click through the API: seconds to the first update holding a panel, and to the last,
    each with its panels' files downloaded (over one kept-alive connection ``http``, as a browser does;
    gradio_client's own downloader opens a new TLS-ready connection per file, about 0.25 s each here)."""
    t0 = time.perf_counter()
    job = client.submit(family, *request, api_name="/generate")
    first, fetched = None, set()
    for update in job:  # each streamed update
        urls = [u for u in _panel_urls(update) if u not in fetched]
        for u in urls:
            http.get(u).raise_for_status()
            fetched.add(u)
        if first is None and urls:
            first = time.perf_counter() - t0
    final = job.result()
    for u in [u for u in _panel_urls(final) if u not in fetched]:
        http.get(u).raise_for_status()
    last = time.perf_counter() - t0
    return {"first_panel_s": round(first if first is not None else last, 3), "all_panels_s": round(last, 3)}


def diversity_click(client, family: str) -> dict:
    """Diversity's default request of ``family`` with "full evaluation" ticked, through the API: its seconds."""
    from app.tabs.diversity import DEFAULT_METHODS, DEFAULT_N

    t0 = time.perf_counter()
    client.predict(family, list(DEFAULT_METHODS), DEFAULT_N, "pca", 0, True, api_name="/diversity")
    return {"family": family, "models": list(DEFAULT_METHODS), "n": DEFAULT_N,
            "full_evaluation_s": round(time.perf_counter() - t0, 3)}


def run(families=None, *, wait: float = 30.0, repeats: int = 3, threads: int = 1, warm_up: bool = True,
        diversity: bool = True, progress=print) -> dict:
    """Start the app, wait ``wait`` s after its start, time the first and repeated clicks per family (and,
    after the first family's first click, Diversity's full evaluation of that family when it has the tab)."""
    import httpx
    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "app.app", "--port", str(port), "--threads", str(threads)]
                            + ([] if warm_up else ["--no-warm-up"]),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    div = None
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_up(url, proc, timeout=600)
        up = time.time() - start
        progress(f"app serving after {up:.1f} s; waiting until {wait:.0f} s after start")
        dropdowns = _dropdowns(url)
        if "family-dd" not in dropdowns:
            raise RuntimeError("the app's page has no family dropdown (elem_id family-dd)")
        shown, diversity_families = dropdowns["family-dd"], dropdowns.get("diversity-family", [])
        families = [f for f in (families or shown) if f in shown]
        client = Client(url, verbose=False, download_files=False)
        # The page's own family has its defaults filled in already; another one's come when it is picked (a
        # user's pick calls /compare_controls too), after the wait, so the bench adds no request to the warm-up.
        requests = {families[0]: _defaults(client, families[0])} if families else {}
        time.sleep(max(0.0, wait - (time.time() - start)))
        http = httpx.Client(timeout=60)
        rows = {}
        for family in families:
            if family not in requests:  # picked in the dropdown (not timed)
                requests[family] = _defaults(client, family)
            request = requests[family]
            since = time.time() - start
            first = click(client, family, request, http)
            rows[family] = {"n": request[2], "first_click_at_s": round(since, 1), "first": first}
            progress(f"{family}: first click {rows[family]['first']}")
            if diversity and div is None and family in diversity_families:
                div = {"clicked_at_s": round(time.time() - start, 1), **diversity_click(client, family)}
                progress(f"Diversity, full evaluation of {family}: {div['full_evaluation_s']} s")
        for family in families:
            request = requests[family]
            again = [click(client, family, request, http) for _ in range(repeats)]
            rows[family]["repeated"] = {k: statistics.median(a[k] for a in again) for k in again[0]}
            progress(f"{family}: repeated click (median of {repeats}) {rows[family]['repeated']}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"serving_after_s": round(up, 1), "wait_s": wait, "repeats": repeats, "app_threads": threads,
            "warm_up": warm_up, "cpu_count": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "families": rows, "diversity": div}


def table(result: dict) -> str:
    lines = ["| family (samples) | first click: first panel / all panels | repeated click: first / all |",
             "|---|---|---|"]
    for family, r in result["families"].items():
        f, a = r["first"], r["repeated"]
        lines.append(f"| {family} ({r['n']:,}) | {f['first_panel_s']:.2f} s / {f['all_panels_s']:.2f} s "
                     f"| {a['first_panel_s']:.2f} s / {a['all_panels_s']:.2f} s |")
    d = result.get("diversity")
    if d:
        lines += ["", f"Diversity, full evaluation of {d['family']} ({', '.join(d['models'])}, n = {d['n']} each, "
                      f"clicked {d['clicked_at_s']:.0f} s after start): {d['full_evaluation_s']:.2f} s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    from pdmd_lab import safety

    p = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=None, help="comma-separated families (default: every family shown)")
    p.add_argument("--wait", type=float, default=30.0, help="seconds after the app's start before the first click")
    p.add_argument("--repeats", type=int, default=3, help="repeated clicks per family (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="the app's torch threads")
    p.add_argument("--no-warm-up", action="store_true", help="start the app without its background warm-up (cold)")
    p.add_argument("--no-diversity", action="store_true", help="skip Diversity's full evaluation")
    p.add_argument("--out", default="runs/app-latency", help=f"folder for {' and '.join(OUTPUTS)}")
    p.add_argument("--overwrite", action="store_true", help=f"replace {' and '.join(OUTPUTS)} in --out")
    args = p.parse_args(argv)
    try:
        safety.check_number("--wait", args.wait, 0, 3600)
        safety.check_number("--repeats", args.repeats, 1, 100)
        safety.check_number("--threads", args.threads, 1, 256)
        out_json, out_md = safety.output_files(args.out, OUTPUTS, overwrite=args.overwrite)
        from app import common  # the shipped families, listed (nothing loaded); imported before the app starts

        shipped = common.shipped_families()
        families = shipped if args.families is None else [f.strip() for f in args.families.split(",") if f.strip()]
        unknown = sorted(set(families) - set(shipped))
        if unknown or not families:
            raise ValueError(f"--families: {', '.join(unknown) or 'none given'} not shown in Compare; choose "
                             f"from {', '.join(shipped)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run(families, wait=args.wait, repeats=args.repeats, threads=args.threads, warm_up=not args.no_warm_up,
                 diversity=not args.no_diversity)
    md = table(result)
    for path, text in ((out_json, json.dumps(result, indent=1) + "\n"), (out_md, md + "\n")):
        safety.make_parent(path).write_text(text)
    print(md)
    print(f"wrote {out_json} and {out_md}; load average at the end {result['load_average_1min_at_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
