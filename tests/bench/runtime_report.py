#!/usr/bin/env python3
"""Summarises tests/bench/runtime.sh timings and writes the "Container runtime"
section of docs/BENCHMARKS.md (replacing an earlier one, leaving others)."""
import os
import platform
import statistics
import sys
import time

from bench_doc import replace_section

work, doc, commit, load_before, load_after, elapsed, crun_v, runc_v, runs = sys.argv[1:10]


def os_name():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def load(name):
    with open(os.path.join(work, name + ".us")) as f:
        return [int(l) / 1000.0 for l in f if l.strip()]


agent, crun, runc = load("agent"), load("crun"), load("runc")
med = {k: statistics.median(v) for k, v in (("agent", agent), ("crun", crun), ("runc", runc))}
rows = [
    ("ours: agent over unix socket (CreateContainer, StartContainer, WaitProcess, RemoveContainer)", agent),
    ("`crun run`", crun),
    ("`runc run`", runc),
]
target_ok = med["agent"] <= med["crun"]
lines = [
    "## Container runtime",
    "",
    f"Written by `tests/bench/runtime.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
    "Reproduce with `make bench-runtime` (root; installs nothing itself: `make deps` brings crun, runc, busybox-static).",
    "",
    f"- **Machine:** {os_name()}, {os.cpu_count()} cores, Linux {platform.release()}; "
    f"load average before / after the timed runs: {load_before} / {load_after} "
    "(the 1-minute figure before includes the release build, if one just ran).",
    "- **Workload:** one bundle for all three: busybox-static rootfs (read-only), `runc spec` defaults "
    "(new pid, network, ipc, uts, mount namespaces; proc, dev, devpts, shm, mqueue, sysfs, cgroup mounts; masked and "
    "readonly paths; 3 capabilities; RLIMIT_NOFILE; no_new_privileges), process `/bin/true`. "
    "The agent reads the same config.json (converted to kata's spec message by `agent/examples/runtime_bench.rs`).",
    "- **Method:** each run is create + start + wait for exit + delete. Ours is timed inside the client around the "
    "four RPCs on one open ttrpc connection (as a shim keeps it); crun and runc are timed around their `run` process "
    "with bash's `$EPOCHREALTIME`. crun runs in a private mount namespace without the cgroup v2 mount (it refuses "
    "this host's hybrid cgroups otherwise; that setup is not timed). "
    f"{runs} runs per tool in interleaved blocks. Cgroups v1 here (hybrid host).",
    f"- **Versions:** cvm-agent static release from commit {commit}; {crun_v}; {runc_v}.",
    f"- **Runtime:** {elapsed} s for the whole script (including the release build).",
    "",
    "| Tool | Median ms | Min ms | Max ms | ours ÷ this |",
    "|---|--:|--:|--:|--:|",
]
for name, v in rows:
    m = statistics.median(v)
    ratio = "" if v is agent else f"{med['agent'] / m:.2f}×"
    lines.append(f"| {name} | {m:.2f} | {min(v):.2f} | {max(v):.2f} | {ratio} |")
lines += [
    "",
    "Ratios are median time of ours ÷ median time of the peer (below 1 = ours faster).",
    "",
    "### Target",
    "",
    f"- the agent path is no slower than crun — {med['agent']:.2f} ms vs {med['crun']:.2f} ms = "
    f"{med['agent'] / med['crun']:.2f}× → **{'MET' if target_ok else 'MISS'}**",
    "",
]
section = "\n".join(lines)
print(section)

replace_section(doc, "## Container runtime", section)
