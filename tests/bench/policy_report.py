#!/usr/bin/env python3
"""Summarises tests/bench/policy.sh and writes the "Agent request policy"
section of docs/BENCHMARKS.md (replacing an earlier one, leaving others)."""
import os
import platform
import statistics
import sys
import time

from bench_doc import replace_section

work, doc, commit, load_before, load_after, elapsed, runs, rounds = sys.argv[1:9]


def lifecycle(name):
    with open(os.path.join(work, name + ".us")) as f:
        return [int(l) / 1000.0 for l in f if l.strip()]


def evals(name):
    path = os.path.join(work, f"eval-{name}.txt")
    if not os.path.exists(path):
        return None
    rows = []
    with open(path) as f:
        for line in f:
            kind, n, med, p90, mx = line.split()
            rows.append((kind, int(n), float(med), float(p90), float(mx)))
    return rows


life = {k: lifecycle(k) for k in ("none", "allow-all", "confidential")}
med = {k: statistics.median(v) for k, v in life.items()}
lines = [
    "## Agent request policy",
    "",
    f"Written by `tests/bench/policy.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
    "Reproduce with `make bench-policy` (root).",
    "",
    f"- **Machine:** {platform.system()} {platform.release()}, {os.cpu_count()} cores; load average before / after "
    f"the lifecycle runs: {load_before} / {load_after}.",
    "- **Lifecycle:** the bundle of \"Container runtime\" (busybox, `runc spec` defaults, `/bin/true`), create + start + "
    "wait + remove through the static release agent over a unix socket, one ttrpc connection. `none` is the same agent "
    "built with `--features bench-no-policy` (no gate at all); `allow-all` and `confidential` are the shipped policies "
    "(the confidential one with the bench directory added to its root-path allow-list, same rules). "
    f"{runs} runs each, in interleaved blocks, each variant on a fresh agent.",
    "- **Evaluation:** in process (`agent/examples/policy_bench.rs`, release): each test case of a policy's "
    "`testcases.json` decoded into its message, turned into the policy input and evaluated on the loaded policy "
    f"(no state change applied), {rounds} times; per request kind, over every case of that kind.",
    f"- **Versions:** commit {commit}; regorus 0.14 (kata's features: arc, base64, base64url, regex, std). "
    f"Whole script: {elapsed} s, including release builds.",
    "",
    "| Policy | Median ms | Min ms | Max ms | ÷ no engine |",
    "|---|--:|--:|--:|--:|",
]
for k in ("none", "allow-all", "confidential"):
    v = life[k]
    lines.append(f"| {k} | {med[k]:.2f} | {min(v):.2f} | {max(v):.2f} | {med[k] / med['none']:.3f}× |")
overhead = med["confidential"] / med["none"] - 1
lines += [""]
targets = []
for name, title in (("confidential", "shipped confidential.rego, its test cases"),
                    ("pod", "genpolicy-shaped pod policy of the tests (state, regex, helper rules over policy_data)"),
                    ("kata", "kata's genpolicy rules.rego + policy_data from kata's genpolicy-settings.json "
                             "(no containers section: CreateContainer runs to a denial), kata's own test cases")):
    rows = evals(name)
    if rows is None:
        continue
    lines += [f"Evaluation time per request, {title}:", "",
              "| Request | Evaluations | Median µs | p90 µs | Max µs |", "|---|--:|--:|--:|--:|"]
    for kind, n, m, p90, mx in rows:
        lines.append(f"| {kind} | {n} | {m:.0f} | {p90:.0f} | {mx:.0f} |")
        if kind == "CreateContainerRequest":
            targets.append((name, m))
    lines.append("")
lines += ["### Targets", ""]
for name, m in targets:
    lines.append(f"- ≤ 1 ms per CreateContainer check ({name}): median {m / 1000:.3f} ms → **{'MET' if m <= 1000 else 'MISS'}**")
lines.append(f"- ≤ 10% on the lifecycle (confidential vs no engine): {overhead * 100:+.1f}% → "
             f"**{'MET' if overhead <= 0.10 else 'MISS'}**")
lines.append("")
section = "\n".join(lines)
print(section)

replace_section(doc, "## Agent request policy", section)
