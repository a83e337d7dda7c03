#!/usr/bin/env python3
"""Helpers for bench/run.sh: latency percentiles from an h2load log, and the
Markdown report (bench/RESULTS.md) from the per-run TSV the script writes."""
import json, statistics, sys


def pct(sorted_vals, p):
    # nearest-rank percentile
    if not sorted_vals:
        return 0
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def h2load_pct(path):
    vals = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                vals.append(int(parts[2]))
    vals.sort()
    print(pct(vals, 50), pct(vals, 99), len(vals))


COLS = ["round", "proto", "mode", "target", "status", "rps", "p50_us", "p99_us",
        "hwm_kb", "cpu_s", "requests", "errors", "upstream_proto", "order", "foreign_cpu_s", "foreign_top"]


def fmt_us(us):
    if us is None:
        return "–"
    if us >= 10000:
        return "%.1f ms" % (us / 1000.0)
    if us >= 1000:
        return "%.2f ms" % (us / 1000.0)
    return "%d µs" % us


def fmt_mib(kb):
    return "–" if kb is None else "%.1f MiB" % (kb / 1024.0)


def read_kv(path):
    out = []
    try:
        for line in open(path):
            if line.strip():
                k, _, v = line.rstrip("\n").partition("\t")
                out.append((k, v))
    except FileNotFoundError:
        pass
    return out


def render(work, out_path):
    tsv, idle_tsv, skip_tsv = work + "/runs.tsv", work + "/idle.tsv", work + "/skip.tsv"
    meta = {
        "facts": read_kv(work + "/facts.tsv"),
        "settings": dict(read_kv(work + "/settings.tsv")),
        "targets": open(work + "/targets.txt").read().split(),
        "setup": [l.rstrip("\n") for l in open(work + "/setup.txt") if l.strip()],
    }
    rows = []
    for line in open(tsv):
        if not line.strip() or line.startswith("#"):
            continue
        rows.append(dict(zip(COLS, line.rstrip("\n").split("\t"))))
    skips = []
    try:
        for line in open(skip_tsv):
            if line.strip():
                t, r = line.rstrip("\n").split("\t", 1)
                skips.append((t, r))
    except FileNotFoundError:
        pass
    targets = meta["targets"]
    L = []
    w = L.append
    w("# inflight-proxy benchmark")
    w("")
    w("Written by `bench/run.sh` (see `bench/README.md`). Everything ran on 127.0.0.1 on this machine.")
    w("")
    w("| fact | value |")
    w("| --- | --- |")
    for k, v in meta["facts"]:
        w("| %s | %s |" % (k, str(v).replace("|", "\\|")))
    w("")
    w("Columns: **req/s** median over rounds (spread = min–max over rounds); **vs direct / vs nginx** = "
      "median req/s of the target ÷ that of *direct* / *nginx* in the same table; **p50/p99** = median over "
      "rounds of each run's latency percentile; **peak RSS** = highest VmHWM of the proxy process(es) over "
      "all its runs (each run starts a fresh proxy); **CPU s/100k** = (utime+stime of the proxy process(es) "
      "over the measured run) ÷ requests × 100,000, median over rounds; **errors** = non-2xx + socket "
      "errors summed over rounds; **upstream** = protocol the app saw for a probe request sent through the "
      "target. *direct* has no proxy, so it has no RSS/CPU figures.")
    w("")
    budget = float(meta["settings"].get("duration", "0") or 0) * float(meta["settings"].get("ncpu", "1") or 1)
    noisy = [r for r in rows if r.get("foreign_cpu_s", "-") not in ("-", "")
             and budget > 0 and float(r["foreign_cpu_s"]) > 0.02 * budget]
    if noisy:
        w("**Disturbed runs:** %d of %d runs had other processes on this machine using more than 2%% of its "
          "CPU (up to %.1f CPU-seconds in a %s s run); see *foreign CPU s* under *Every run*." % (
              len(noisy), len(rows), max(float(r["foreign_cpu_s"]) for r in noisy), meta["settings"]["duration"]))
    else:
        w("Other processes on this machine used less than 2% of its CPU during every run (*foreign CPU s* under *Every run*).")
    w("")
    sections = [
        ("max", "h1", "Maximum throughput, HTTP/1.1 — wrk, %(conns)s connections" % meta["settings"]),
        ("max", "h2c", "Maximum throughput, h2c — h2load, %(conns)s connections × %(h2_streams)s streams" % meta["settings"]),
        ("rate", "h1", "Fixed rate, HTTP/1.1 — h2load --h1 --rps, %(rate)s req/s over %(rate_conns)s connections" % meta["settings"]),
        ("rate", "h2c", "Fixed rate, h2c — h2load --rps, %(rate)s req/s over %(rate_conns)s connections" % meta["settings"]),
    ]
    for mode, proto, title in sections:
        sel = [r for r in rows if r["mode"] == mode and r["proto"] == proto]
        if not sel:
            continue
        w("## " + title)
        w("")
        w("| target | req/s | spread | vs direct | vs nginx | p50 | p99 | peak RSS | CPU s/100k | errors | upstream |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        med = {}
        for t in targets:
            ok = [r for r in sel if r["target"] == t and r["status"] == "ok"]
            if ok:
                med[t] = statistics.median(float(r["rps"]) for r in ok)
        for t in targets:
            tr = [r for r in sel if r["target"] == t]
            ok = [r for r in tr if r["status"] == "ok"]
            if not tr:
                continue
            if not ok:
                w("| %s | failed: %s | | | | | | | | | |" % (t, tr[-1]["status"]))
                continue
            rps = [float(r["rps"]) for r in ok]
            m = statistics.median(rps)
            spread = "%.0f–%.0f" % (min(rps), max(rps)) if len(rps) > 1 else "–"
            vd = "%.2f" % (m / med["direct"]) if "direct" in med else "–"
            vn = "%.2f" % (m / med["nginx"]) if "nginx" in med else "–"
            p50 = statistics.median(int(r["p50_us"]) for r in ok)
            p99 = statistics.median(int(r["p99_us"]) for r in ok)
            hwm = [int(r["hwm_kb"]) for r in tr if r["hwm_kb"] not in ("", "-")]
            cpu = [float(r["cpu_s"]) / int(r["requests"]) * 1e5 for r in ok
                   if r["cpu_s"] not in ("", "-") and int(r["requests"]) > 0]
            errs = sum(int(r["errors"]) for r in tr if r["errors"].isdigit())
            fails = len(tr) - len(ok)
            w("| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %d%s | %s |" % (
                t, m, spread, vd, vn, fmt_us(p50), fmt_us(p99),
                fmt_mib(max(hwm)) if hwm else "–",
                "%.2f" % statistics.median(cpu) if cpu else "–",
                errs, (" (%d failed runs)" % fails) if fails else "",
                ok[-1]["upstream_proto"]))
        w("")
    idle = []
    try:
        for line in open(idle_tsv):
            if line.strip():
                idle.append(line.rstrip("\n").split("\t"))
    except FileNotFoundError:
        pass
    if idle:
        w("## Memory: idle, and with %s idle client connections" % meta["settings"]["idle_conns"])
        w("")
        w("Fresh proxy (HTTP/1.1 configuration), after one readiness request. VmRSS summed over the proxy's "
          "processes. *connected*: the connections are open but nothing was sent; *after 1 request each*: one "
          "keep-alive GET was answered on every connection and the connections then left idle. Opened by "
          "`bench/lib/idle-conns.py` (Python sockets), not by a load generator.")
        w("")
        w("| target | idle RSS | %s connected | after 1 request each | still open | note |" % meta["settings"]["idle_conns"])
        w("| --- | ---: | ---: | ---: | ---: | --- |")
        for r in idle:
            t, status = r[0], r[1]
            if status != "ok":
                w("| %s | failed: %s | | | | |" % (t, status))
                continue
            d = json.loads(r[2])
            w("| %s | %s | %s | %s | %d | %s |" % (t, fmt_mib(d["idle_kb"]), fmt_mib(d["connected_kb"]),
                                                 fmt_mib(d["requested_kb"]), d["still_open"],
                                                 "%d/%d answered 200" % (d["answered_200"], d["count"])))
        w("")
    if skips:
        w("## Targets left out")
        w("")
        for t, r in skips:
            w("- **%s**: %s" % (t, r))
        w("")
    w("## Set-up of each target")
    w("")
    for line in meta["setup"]:
        w("- " + line)
    w("")
    w("## Every run")
    w("")
    w("*foreign CPU s*: CPU time used during the run by processes that are not part of the benchmark "
      "(per-process CPU time of everything but the script, app, proxy, API stand-in and load generator), "
      "with the biggest such users.")
    w("")
    w("| round | order | protocol | mode | target | status | req/s | p50 µs | p99 µs | VmHWM KiB | CPU s | requests | errors | foreign CPU s | foreign users |")
    w("| ---: | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["round"], r["order"], r["proto"], r["mode"], r["target"], r["status"], r["rps"], r["p50_us"],
            r["p99_us"], r["hwm_kb"], r["cpu_s"], r["requests"], r["errors"], r.get("foreign_cpu_s", "-"),
            r.get("foreign_top", "-")))
    w("")
    open(out_path, "w").write("\n".join(L))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "h2load-pct":
        h2load_pct(sys.argv[2])
    elif cmd == "render":
        render(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown command " + cmd)
