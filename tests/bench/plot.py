#!/usr/bin/env python3
"""Plots of the throughput benchmark (tests/bench/run).

    python3 tests/bench/plot.py [RESULTS_DIR]

Reads the CSV series the driver wrote (default target/bench) and writes
docs/bench-throughput.png (mails sent over time during the end-to-end drains,
one line per backend) and docs/bench-latency.png (CDF of the per-mail
latency from publish to relay acceptance, one line per backend).
"""
import csv
import glob
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
except ImportError:
    print("plot.py needs matplotlib: pip install matplotlib", file=sys.stderr)
    sys.exit(2)

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [[float(x) for x in r] for r in rows[1:] if r]


def label(path):
    return os.path.basename(path)[: -len(".csv")]


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "bench")
    docs = os.path.join(ROOT, "docs")
    drains = sorted(glob.glob(os.path.join(src, "e2e-*.csv")))
    latencies = sorted(glob.glob(os.path.join(src, "latency-*.csv")))
    if not drains and not latencies:
        print(f"plot.py: no e2e-*.csv or latency-*.csv in {src}: run tests/bench/run first",
              file=sys.stderr)
        sys.exit(1)

    if drains:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for path in drains:
            _, rows = read(path)
            ax.plot([r[0] / 1000 for r in rows], [r[1] for r in rows], label=label(path))
        ax.set_xlabel("seconds since the worker started")
        ax.set_ylabel("mails accepted by the relay")
        ax.set_title("End-to-end drain (events published before the start)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = os.path.join(docs, "bench-throughput.png")
        fig.savefig(out, dpi=110)
        print(out)

    if latencies:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for path in latencies:
            _, rows = read(path)
            lat = sorted(r[1] for r in rows)
            n = len(lat)
            ax.plot(lat, [(i + 1) / n for i in range(n)], label=f"{label(path)} ({n} mails)")
        ax.set_xscale("log")
        ax.set_xlabel("ms from publish to relay acceptance (log scale)")
        ax.set_ylabel("fraction of mails")
        ax.set_title("Latency at a steady event rate (CDF)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        out = os.path.join(docs, "bench-latency.png")
        fig.savefig(out, dpi=110)
        print(out)


if __name__ == "__main__":
    main()
