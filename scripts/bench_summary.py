#!/usr/bin/env python3
"""bench_summary.py - helpers for scripts/bench-foundation.sh (stdlib only).

  bench_summary.py parse-fx FILE CONTENDER CHECK [COLL NRANKS]
      fx-bench --json output (FILE) -> CSV fields, one line per mode (oop, ip):
      contender,mode,bytes,iters,time_us,algbw_GBps,busbw_GBps,check
      (with COLL and NRANKS: fails unless the JSON's collective and nranks match)
  bench_summary.py parse-iperf FILE
      iperf3 -J --bidir output -> "fwd_Gbps,rev_Gbps,sum_Gbps" (NA on error)
  bench_summary.py free-port
      prints a currently free TCP port on 127.0.0.1
  bench_summary.py summarize DIR [--fx-mode oop|ip]
      DIR/<coll>.csv (allreduce.csv or allgather.csv, after coll= in
      DIR/meta.txt; allreduce when absent), iperf.csv, membw.csv -> markdown
      on stdout (also written to DIR/summary.md); N ranks from np= in meta.txt

Conventions (nccl-tests): allreduce size = buffer bytes, busbw = algbw *
2(n-1)/n; allgather size = gathered output bytes, busbw = algbw * (n-1)/n;
GB/s = 1e9 B/s. Sizes <= 64 B are shown as time per op (us), larger ones as
busbw.
"""
import csv
import json
import os
import socket
import statistics
import sys
from collections import OrderedDict, defaultdict

PEERS = ("ompi-tcp", "ompi-shm", "gloo-ring_chunked")
SMALL = 64  # sizes up to this many bytes: time per op (us), not busbw
COLL_DESC = {"allreduce": "all-reduce float32 sum", "allgather": "all-gather float32"}


def human(n):
    n = int(n)
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def load_json_blob(text):
    """fx-bench may print log lines around the JSON object: take the outermost {...}."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    a, b = text.find("{"), text.rfind("}")
    if a < 0 or b <= a:
        raise ValueError("no JSON object in output")
    return json.loads(text[a : b + 1])


def parse_fx(path, contender, check, coll=None, nranks=None):
    with open(path, errors="replace") as f:
        d = load_json_blob(f.read())
    if coll is not None and d.get("collective") not in (None, coll):
        raise ValueError(f"fx-bench ran {d.get('collective')}, expected {coll}")
    if nranks is not None and d.get("nranks") not in (None, "") and int(d["nranks"]) != int(nranks):
        raise ValueError(f"fx-bench ran {d.get('nranks')} ranks, expected {nranks}")
    res = d.get("results") or []
    if not res:
        raise ValueError("fx-bench JSON has no results")
    iters = d.get("iters", "")
    lines = []
    for r in res:
        for mode in ("oop", "ip"):
            m = r.get(mode)
            if not isinstance(m, dict) or m.get("time_us") in (None, ""):
                continue
            wrong = m.get("wrong")
            if isinstance(wrong, (int, float)) and wrong > 0:
                ok = "FAIL"
            elif str(check) == "0" or wrong is None or (isinstance(wrong, (int, float)) and wrong < 0):
                ok = "unchecked"
            else:
                ok = "ok"
            lines.append(
                ",".join(
                    str(x)
                    for x in (
                        contender,
                        mode,
                        r.get("size", ""),
                        iters,
                        "%.2f" % float(m["time_us"]),
                        "%.4f" % float(m.get("algbw", 0) or 0),
                        "%.4f" % float(m.get("busbw", 0) or 0),
                        ok,
                    )
                )
            )
    if not lines:
        raise ValueError("fx-bench JSON results carry no oop/ip timings")
    print("\n".join(lines))


def parse_iperf(path):
    try:
        with open(path, errors="replace") as f:
            d = load_json_blob(f.read())
        e = d["end"]
        fwd = e["sum_received"]["bits_per_second"] / 1e9
        rev = e.get("sum_received_bidir_reverse", {}).get("bits_per_second", 0.0) / 1e9
        print("%.3f,%.3f,%.3f" % (fwd, rev, fwd + rev))
    except Exception:  # noqa: BLE001 - any failure is reported as NA
        print("NA,NA,NA")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def fnum(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals), len(vals)


def fmt_bw(s, digits=2):
    if s is None:
        return "n/a"
    med, lo, hi, n = s
    if n == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def fmt_us(s):
    if s is None:
        return "n/a"
    med, lo, hi, n = s
    d = 1 if med < 1000 else 0
    if n == 1:
        return f"{med:.{d}f}"
    return f"{med:.{d}f} ({lo:.{d}f}-{hi:.{d}f})"


def summarize(d, fx_mode="oop"):
    out = []
    meta = {}
    mp = os.path.join(d, "meta.txt")
    if os.path.exists(mp):
        with open(mp) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    meta[k] = v
    coll = meta.get("coll") or "allreduce"
    csv_path = os.path.join(d, f"{coll}.csv")
    if not os.path.exists(csv_path) and not meta.get("coll"):
        csv_path = os.path.join(d, "allreduce.csv")
    rows = read_csv(csv_path)
    # rows of another collective or rank count (should not happen) are left out
    rows = [
        r
        for r in rows
        if r.get("coll") in (None, "", coll)
        and (not meta.get("np") or r.get("nranks") in (None, "", meta.get("np")))
    ]
    lat_bytes = int(meta.get("lat_bytes", "8"))
    try:
        nranks = int(meta.get("np") or next((r["nranks"] for r in rows if r.get("nranks")), 2))
    except ValueError:
        nranks = 2

    # contender order: fx variants first, then peers, as they first appear
    order = OrderedDict()
    for r in rows:
        c = r["contender"]
        if c.startswith("fx"):
            order.setdefault(c, None)
    for p in PEERS:
        if any(r["contender"] == p for r in rows):
            order.setdefault(p, None)
    for r in rows:
        order.setdefault(r["contender"], None)
    contenders = list(order)

    def mode_ok(r):
        if r["contender"].startswith("fx"):
            return r["mode"] == fx_mode
        return True

    # (contender, bytes) -> [us] for sizes <= SMALL (and the latency size),
    # [GB/s busbw] for the others
    vals = defaultdict(list)
    errors = defaultdict(int)
    fails = defaultdict(int)
    sizes = set()
    rounds = set()

    def is_time(b):
        return b == lat_bytes or b <= SMALL

    for r in rows:
        rounds.add(r["round"])
        if not mode_ok(r):
            continue
        c, b = r["contender"], int(r["bytes"] or 0)
        if r["check"] in ("ERR", "TIMEOUT"):
            errors[c] += 1
            continue
        if r["check"] == "FAIL":
            fails[c] += 1
        sizes.add(b)
        vals[(c, b)].append(fnum(r["time_us"] if is_time(b) else r["busbw_GBps"]))
    sizes.add(lat_bytes)  # the latency column is always there (n/a if it failed)
    sizes = sorted(sizes)
    bw_sizes = [s for s in sizes if not is_time(s)]

    def bw_digits(s):  # sub-MiB sizes run at a few MB/s: more decimals
        return 4 if s < (1 << 20) else 2

    def col_name(s):
        if s == lat_bytes:
            return f"{human(s)} latency"
        return f"{human(s)} time" if is_time(s) else human(s)

    out.append(
        f"## Foundation benchmark: {COLL_DESC.get(coll, coll)}, {nranks} ranks, loopback"
    )
    out.append("")
    out.append(
        f"{meta.get('date', '')} on {meta.get('host', '')} ({meta.get('cpu', '')}, "
        f"{meta.get('nproc', '?')} cores); {len(rounds)} round(s) "
        f"(contenders interleaved in each size round, order rotated per round); "
        f"cells: median (min-max) over rounds; wall time {meta.get('wall_s', '?')} s."
    )
    peers_line = "Open MPI: out-of-place; Gloo ring_chunked: in-place."
    if coll != "allreduce":
        peers_line = "Open MPI: out-of-place."
    out.append(
        f"fx-bench figures: {'out-of-place' if fx_mode == 'oop' else 'in-place'}; " + peers_line
    )
    if coll == "allgather":
        out.append(
            f"Sizes are gathered output bytes (each rank sends size/{nranks}); "
            f"busbw = algbw * (N-1)/N."
        )
    if meta.get("left_out"):
        out.append(f"Left out: {meta['left_out']}.")
    out.append("")

    hdr = "| contender |" + "".join(
        f" {col_name(s)} us |" if is_time(s) else f" {human(s)} busbw GB/s |" for s in sizes
    )
    has_ratio = (16 << 20) in bw_sizes and len([s for s in bw_sizes if s > (16 << 20)]) > 0
    big = max(bw_sizes) if bw_sizes else None
    if has_ratio:
        hdr += f" {human(big)}/16 MiB |"
    out.append(hdr)
    out.append("|---|" + "---:|" * len(sizes) + ("---:|" if has_ratio else ""))
    med = {}
    for c in contenders:
        line = f"| {c} |"
        for s in sizes:
            st = stats(vals[(c, s)])
            med[(c, s)] = st[0] if st else None
            line += f" {fmt_us(st)} |" if is_time(s) else f" {fmt_bw(st, bw_digits(s))} |"
        if has_ratio:
            a, b = med.get((c, big)), med.get((c, 16 << 20))
            line += f" {a / b:.2f} |" if a and b else " n/a |"
        out.append(line)
    out.append("")

    fxs = [c for c in contenders if c.startswith("fx")]
    peers = [c for c in contenders if not c.startswith("fx")]
    if fxs and peers:
        out.append(
            "### libfabricx / best peer (speed ratio: busbw_fx / busbw_best, "
            "latency_best / latency_fx; > 1 means libfabricx is faster)"
        )
        out.append("")
        out.append("| |" + "".join(f" {col_name(s)} |" for s in sizes))
        out.append("|---|" + "---:|" * len(sizes))
        best = {}
        for s in sizes:
            got = [(med.get((p, s)), p) for p in peers if med.get((p, s))]
            best[s] = (min(got) if is_time(s) else max(got)) if got else None
        line = "| best peer |"
        for s in sizes:
            if not best[s]:
                line += " n/a |"
            elif is_time(s):
                line += f" {best[s][1]} {best[s][0]:.1f} us |"
            else:
                line += f" {best[s][1]} {best[s][0]:.{bw_digits(s)}f} |"
        out.append(line)
        for c in fxs:
            line = f"| {c} |"
            for s in sizes:
                v, b = med.get((c, s)), best[s]
                if not (v and b):
                    line += " n/a |"
                elif is_time(s):
                    line += f" {b[0] / v:.2f} |"
                else:
                    line += f" {v / b[0]:.2f} |"
            out.append(line)
        out.append("")

    # ---------------------------------------------------------------- limits
    ip = read_csv(os.path.join(d, "iperf.csv"))
    mb = read_csv(os.path.join(d, "membw.csv"))
    if ip or mb:
        out.append("### Machine limits (median (min-max) over rounds)")
        out.append("")
        out.append("| probe | value |")
        out.append("|---|---:|")
        by = defaultdict(lambda: defaultdict(list))
        for r in ip:
            for k in ("fwd_Gbps", "rev_Gbps", "sum_Gbps"):
                by[r["streams"]][k].append(fnum(r[k]))
        for p in sorted(by, key=int):
            f, rv, sm = (stats(by[p][k]) for k in ("fwd_Gbps", "rev_Gbps", "sum_Gbps"))
            out.append(
                f"| iperf3 --bidir loopback, {p} stream(s), Gbit/s both directions |"
                f" {fmt_bw(sm, 1)} |"
            )
            out.append(f"| same, Gbit/s fwd / rev | {fmt_bw(f, 1)} / {fmt_bw(rv, 1)} |")
            if sm:
                # in an N-rank ring every rank sends (and receives) busbw bytes/s,
                # so loopback carries N * busbw in all (2-rank: busbw each way)
                out.append(
                    f"| same, both-direction sum / {nranks} in GB/s (compare with {nranks}-rank busbw) |"
                    f" {sm[0] / nranks / 8:.2f} |"
                )
        byk = defaultdict(list)
        for r in mb:
            byk[(r["kernel"], int(r["threads"]), int(r["bytes"]))].append(fnum(r["GBps"]))
        names = {"memcpy": "memcpy", "reduce": "fp32 a+=b (SSE2)", "reduce_avx2": "fp32 a+=b (AVX2)"}
        for (k, t, b) in sorted(byk, key=lambda x: (list(names).index(x[0]) if x[0] in names else 9, x[2])):
            out.append(f"| {names.get(k, k)}, {t} thread, {human(b)}, GB/s | {fmt_bw(stats(byk[(k, t, b)]))} |")
        out.append("")

    notes = []
    lrows = read_csv(os.path.join(d, "load.csv"))
    busy = [fnum(r.get("cpu_busy_pct")) for r in lrows]
    busy = [x for x in busy if x is not None]
    loads = [fnum(r.get("load1")) for r in lrows]
    loads += [fnum(r.get("load1")) for r in rows]
    loads = [x for x in loads if x is not None]
    if loads:
        try:
            ncpu = int(meta.get("nproc", "0"))
        except ValueError:
            ncpu = 0
        line = f"Load average (1 min) during the run: {min(loads):.2f}-{max(loads):.2f}"
        if ncpu and max(loads) > ncpu:
            line += f" (above the {ncpu} cores: other work competed; figures are noisy, compare ratios)"
        if busy:
            line += f"; CPU busy before each round (1 s sample): {min(busy):.0f}-{max(busy):.0f}%"
            if max(busy) >= 25:
                line += " (other jobs were running)"
        out.append(line)
        out.append("")
    for c in contenders:
        if errors[c]:
            notes.append(f"{c}: {errors[c]} run(s) failed or timed out (see logs/)")
        if fails[c]:
            notes.append(f"{c}: {fails[c]} run(s) with WRONG results")
    if notes:
        out.append("**Problems:** " + "; ".join(notes))
        out.append("")
    out.append(f"Raw CSV and logs: {os.path.abspath(d)}")
    text = "\n".join(out) + "\n"
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


def main(argv):
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    cmd = argv[1]
    try:
        if cmd == "parse-fx" and len(argv) == 5:
            parse_fx(argv[2], argv[3], argv[4])
        elif cmd == "parse-fx" and len(argv) == 7:
            parse_fx(argv[2], argv[3], argv[4], argv[5], argv[6])
        elif cmd == "parse-iperf" and len(argv) == 3:
            parse_iperf(argv[2])
        elif cmd == "free-port":
            free_port()
        elif cmd == "summarize" and len(argv) >= 3:
            mode = "oop"
            if len(argv) >= 5 and argv[3] == "--fx-mode":
                mode = argv[4]
            summarize(argv[2], mode)
        else:
            sys.stderr.write(__doc__)
            return 2
    except (ValueError, KeyError, OSError) as e:
        sys.stderr.write(f"bench_summary.py {cmd}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
