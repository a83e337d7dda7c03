#!/usr/bin/env python3
"""CPU time used by processes that are not part of the benchmark.

  cpu-others.py snap FILE            save utime/stime/cutime/cstime of every process
  cpu-others.py diff BEFORE AFTER ROOT
  cpu-others.py window SECONDS ROOT  snap, sleep, diff

"Ours" is ROOT (bench/run.sh's shell) and all its descendants: app, proxy, API stand-in and
load generator. Everything else, kernel threads included, is "other". Processes that start
and end between the two snapshots are still seen when their parent reaped them (its
cutime/cstime). /proc/stat is not used: on some VMs its totals disagree with per-process
accounting. diff prints: CPU seconds used by others, then the three biggest users.
"""
import json, os, sys, time

HZ = os.sysconf("SC_CLK_TCK")


def snapshot():
    procs = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        # after "pid (comm) ": f[0]=state f[1]=ppid ... f[11]=utime f[12]=stime f[13]=cutime f[14]=cstime f[19]=starttime
        procs[p] = {"comm": comm, "ppid": f[1], "own": int(f[11]) + int(f[12]),
                    "kids": int(f[13]) + int(f[14]), "start": f[19]}
    return procs


def ours(procs, root):
    mine = {root}
    changed = True
    while changed:
        changed = False
        for pid, p in procs.items():
            if pid not in mine and p["ppid"] in mine:
                mine.add(pid)
                changed = True
    return mine


def diff(a, b, root):
    mine = ours(b, root) | ours(a, root)
    total = 0
    per = {}
    for pid, p in b.items():
        if pid in mine:
            continue
        q = a.get(pid)
        if q and q["start"] == p["start"]:
            d = (p["own"] + p["kids"]) - (q["own"] + q["kids"])
        else:
            d = p["own"] + p["kids"]
        if d > 0:
            total += d
            per[p["comm"]] = per.get(p["comm"], 0) + d
    # a process that ended in the window and was reaped shows up whole in its parent's
    # cutime; take off what it had used before the window
    for pid, q in a.items():
        if pid not in b and pid not in mine:
            total -= q["own"] + q["kids"]
            parent = b.get(q["ppid"])
            if parent and parent["comm"] in per:
                per[parent["comm"]] -= q["own"] + q["kids"]
    total = max(total, 0)
    # per-name figures are a hint (reaped children are charged to whoever reaped them)
    top = sorted(((c, min(t, total)) for c, t in per.items()), key=lambda kv: -kv[1])[:3]
    return total / HZ, ",".join("%s:%.2f" % (c, t / HZ) for c, t in top if t > 0) or "-"


def main():
    cmd = sys.argv[1]
    if cmd == "snap":
        with open(sys.argv[2], "w") as f:
            json.dump(snapshot(), f)
    elif cmd == "diff":
        a = json.load(open(sys.argv[2]))
        b = json.load(open(sys.argv[3]))
        t, top = diff(a, b, sys.argv[4])
        print("%.2f %s" % (t, top))
    elif cmd == "window":
        a = snapshot()
        time.sleep(float(sys.argv[2]))
        t, top = diff(a, snapshot(), sys.argv[3])
        print("%.2f %s" % (t, top))
    else:
        sys.exit("unknown command")


if __name__ == "__main__":
    main()
