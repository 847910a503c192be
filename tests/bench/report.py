#!/usr/bin/env python3
"""Summarises tests/bench/pull.sh measurements: prints the table and targets,
and (with --doc FILE) rewrites the "## Image pull" section of FILE."""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys

SECTION = "## Image pull"
INTRO = ("# Benchmarks\n\n"
         "Measured performance of the guest stack. Each section is written by the script it names "
         "and says how to reproduce it.\n")

LABELS = {
    "ours-flatten": "ours: `image-pull --rootfs flatten`",
    "ours-auto": "ours: `image-pull --rootfs auto`",
    "floor": "floor: `curl \\| gzip -dc \\| tar -x` per layer",
    "skopeo-umoci": "skopeo copy + umoci unpack",
    "skopeo-copy": "↳ skopeo copy (fetch only)",
    "umoci-unpack": "↳ umoci unpack",
    "ctr": "containerd: `ctr images pull`",
}
PEERS = ["floor", "skopeo-umoci", "ctr"]
OURS = ["ours-flatten", "ours-auto"]
# peer -> (largest ours/peer time ratio that meets the target, wording)
TARGETS = {
    "floor": (1.0, "ours ≤ 1.0× the floor"),
    "skopeo-umoci": (0.5, "ours ≥ 2× faster than skopeo + umoci (ratio ≤ 0.50)"),
    "ctr": (1 / 1.2, "ours ≥ 1.2× faster than ctr (ratio ≤ 0.83)"),
}
RSS_TARGET_MIB = 24


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            tool, rnd, wall, user, sys_, rss = line.split("\t")
            rows.setdefault(tool, []).append(
                {"wall": float(wall), "cpu": float(user) + float(sys_), "rss": int(rss)})
    return rows


def label(tool):
    m = re.fullmatch(r"ours-auto-mcl(\d+)", tool)
    if m:
        return f"ours: `--rootfs auto --max-concurrent-layers {m.group(1)}`"
    return LABELS.get(tool, tool)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    distro = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"') + ", "
    except OSError:
        pass
    return f"{distro}{os.cpu_count()} cores (nproc), {model}{mem}, Linux {platform.release()}"


def fmt_ratio(r):
    return f"{r:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    for a in ("results", "checks", "notes", "image", "elapsed", "commit", "cmdline", "load",
              "ctr_snapshotter", "ctr_note", "ctr_version", "skopeo_version", "umoci_version", "doc"):
        ap.add_argument("--" + a.replace("_", "-"), default="")
    ap.add_argument("--runs", type=int, default=0)
    a = ap.parse_args()

    rows = load(a.results)
    img = json.load(open(a.image))
    med = {t: statistics.median(r["wall"] for r in rs) for t, rs in rows.items()}

    order = [t for t in OURS if t in rows]
    order += sorted((t for t in rows if t.startswith("ours-auto-mcl")), key=lambda t: int(t[13:]))
    for p in ("floor", "skopeo-umoci", "skopeo-copy", "umoci-unpack", "ctr"):
        if p in rows:
            order.append(p)
    ours_here = [t for t in OURS if t in rows]

    hdr = ["Tool", "Median s", "Min s", "Max s", "CPU s (median)", "Peak RSS MiB (max)"]
    hdr += [f"{o} ÷ this" for o in ours_here]
    table = ["| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] + ["--:"] * (len(hdr) - 1)) + "|"]
    for t in order:
        rs = rows[t]
        cells = [label(t), f"{med[t]:.2f}", f"{min(r['wall'] for r in rs):.2f}",
                 f"{max(r['wall'] for r in rs):.2f}", f"{statistics.median(r['cpu'] for r in rs):.1f}",
                 f"{max(r['rss'] for r in rs) / 1024:.1f}"]
        for o in ours_here:
            cells.append(fmt_ratio(med[o] / med[t]) if t in PEERS else "")
        table.append("| " + " | ".join(cells) + " |")

    targets = []
    verdicts = []
    for o in ours_here:
        for peer, (limit, words) in TARGETS.items():
            if peer not in rows:
                targets.append(f"- {words} — `{o}`: **not measured** ({peer} was not run)")
                continue
            r = med[o] / med[peer]
            ok = r <= limit + 1e-9
            verdicts.append(ok)
            targets.append(f"- {words} — `{o}`: {med[o]:.2f} s vs {med[peer]:.2f} s = {r:.2f}× → "
                           f"**{'PASS' if ok else 'MISS'}**")
        peak = max(r["rss"] for r in rows[o])
        ok = peak <= RSS_TARGET_MIB * 1024
        verdicts.append(ok)
        extra = ""
        if ok and peak * 1024 > RSS_TARGET_MIB * 1_000_000:
            extra = f" (but above 24 decimal MB: {peak * 1024 / 1e6:.1f} MB)"
        targets.append(f"- peak RSS ≤ {RSS_TARGET_MIB} MiB — `{o}`: {peak / 1024:.1f} MiB (max of "
                       f"{len(rows[o])} run{'s' if len(rows[o]) != 1 else ''}; median {statistics.median(r['rss'] for r in rows[o]) / 1024:.1f}) → "
                       f"**{'PASS' if ok else 'MISS'}**{extra}")

    notes = []
    if a.notes and os.path.exists(a.notes):
        notes += [l.strip() for l in open(a.notes) if l.strip()]
    if a.ctr_note:
        notes.append(a.ctr_note)
    sigs = {}
    if a.checks and os.path.exists(a.checks):
        for line in open(a.checks):
            if line.strip():
                t, sig = line.rstrip("\n").split("\t")
                sigs[t] = sig
    if sigs:
        if len(set(sigs.values())) == 1:
            n, b = next(iter(sigs.values())).split()
            notes.append(f"Result check (first round): {', '.join(f'`{t}`' for t in sigs)} produced the same "
                         f"rootfs: {n} regular files, {int(b) / 1e6:.1f} MB of file data.")
        else:
            notes.append("Result check (first round) **mismatch** — regular files / bytes per tool: " +
                         "; ".join(f"`{t}` {s}" for t, s in sigs.items()))

    wide = [f"`{t}` {min(r['wall'] for r in rows[t]):.2f}–{max(r['wall'] for r in rows[t]):.2f} s"
            for t in order if max(r["wall"] for r in rows[t]) > 1.4 * min(r["wall"] for r in rows[t])]
    if wide:
        notes.append("Wide spread between runs (max > 1.4× min): " + "; ".join(wide) +
                     ". Other work on the machine varies during the run; the targets use medians.")
    sweep = sorted((int(t[13:]), t) for t in rows if t.startswith("ours-auto-mcl"))
    if sweep and "ours-auto" in rows:
        sweep = sorted(sweep + [(3, "ours-auto")])
        notes.append("`--max-concurrent-layers` (with `--rootfs auto`; 3 is the default): " + "; ".join(
            f"{k}: {med[t]:.2f} s, peak {max(r['rss'] for r in rows[t]) / 1024:.1f} MiB" for k, t in sweep) + ".")

    layers = img["layers"]
    mb = lambda b: f"{b / 1e6:.1f} MB"
    per_layer = ", ".join(f"{mb(l['size'])} → {mb(l['uncompressed'])} ({l['files']} files)" for l in layers)
    kinds = {"text": 0, "bin": 0, "rand": 0}
    for l in layers:
        for k, v in l["content_bytes"].items():
            kinds[k] += v
    tot = sum(kinds.values()) or 1
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    elapsed = int(float(a.elapsed or 0))

    out = [SECTION, "",
           f"Written by `tests/bench/pull.sh` on {date}. Reproduce with `{a.cmdline}` "
           "(the target runs `bash tests/bench/pull.sh`; it installs missing Debian packages, builds the "
           "static release `image-pull`, generates and caches the image under `target/bench-cache/`).", "",
           f"- **Machine:** {machine()}. Load average before / after "
           f"the measurements {a.load}.",
           f"- **Image:** {len(layers)} gzip layers (level 6), {mb(img['compressed_bytes'])} compressed, "
           f"{mb(img['uncompressed_bytes'])} uncompressed tar, {img['files']} regular files, "
           f"{img['symlinks']} symlinks, {img['hardlinks']} hardlinks, plus a few whiteouts and an opaque "
           f"directory; file data {100 * kinds['text'] / tot:.0f}% text-like, {100 * kinds['bin'] / tot:.0f}% "
           f"binary-like, {100 * kinds['rand'] / tot:.0f}% incompressible. Layers (compressed → tar): "
           f"{per_layer}. Generated by `tests/bench/gen_image.py` (seed {img['seed']}, Python {img['python']}); "
           f"manifest `{img['manifest_digest']}`, served by docker-registry on 127.0.0.1 over plain HTTP.",
           f"- **Method:** {a.runs} run{'s' if a.runs != 1 else ''} per tool, tools interleaved round-robin (order rotated each "
           "round); every run starts cold (fresh `--work-dir` and bundle, fresh skopeo layout, fresh containerd "
           "root/state with the daemon restarted, fresh floor directory). Registry blobs are warm in the page "
           "cache for every tool. `sync` runs before each run, untimed; timing stops when the command exits "
           "(the final writeback of its output is not timed for any tool). CPU = user + sys. Peak RSS from GNU "
           "time `%M`; for ctr it is the containerd daemon's VmHWM (which does the work), and its CPU includes "
           f"the daemon's. ctr uses the `{a.ctr_snapshotter}` snapshotter and was checked to leave one committed "
           "snapshot per layer (the pull includes the unpack). The floor applies the layers one after "
           "another, each through one `curl | gzip -dc | tar -x` pipeline (no digests, no whiteout handling); "
           "ours fetches and unpacks up to `--max-concurrent-layers` (default 3) layers at once, so on 2 cores "
           "it can beat that floor.",
           f"- **Versions:** image-pull at {a.commit}; containerd {a.ctr_version}; skopeo {a.skopeo_version}; "
           f"umoci {a.umoci_version}.",
           f"- **Runtime:** {elapsed // 60} min {elapsed % 60} s for the whole script.",
           "", *table, "",
           "Ratios are median time of ours ÷ median time of the peer (below 1 = ours faster).", "",
           "### Targets", "", *targets]
    if notes:
        out += ["", "### Notes", ""] + [f"- {n}" for n in notes]
    section = "\n".join(out) + "\n"

    print()
    print("\n".join(table))
    print()
    print("\n".join(targets))
    for n in notes:
        print("note:", n)
    print(f"\ntotal runtime {elapsed // 60} min {elapsed % 60} s")

    if a.doc:
        text = open(a.doc).read() if os.path.exists(a.doc) else INTRO
        lines = text.splitlines(keepends=True)
        start = next((i for i, l in enumerate(lines) if l.rstrip() == SECTION), None)
        if start is None:
            text = text.rstrip("\n") + "\n\n" + section
        else:
            end = next((i for i in range(start + 1, len(lines)) if re.match(r"## ", lines[i])), len(lines))
            rest = "".join(lines[end:])
            text = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
        with open(a.doc + ".tmp", "w") as f:
            f.write(text)
        os.replace(a.doc + ".tmp", a.doc)
        print(f"updated {a.doc} ({SECTION})")


if __name__ == "__main__":
    main()
