"""How much the evaluation watcher slows the training beside it on one host.

Trains the quickstart config with the `ood` evaluator (`configs/trifeatures.py:cpu,ood=true`) alone, and
with `comm_jax.evaluate` watching the same workdir at each priority of `--watchers` (`idle`: the
watcher's default, SCHED_IDLE; `niceN`: `--noidle --nice=N`), as one process and as a two-process job
(the watcher then runs as two processes too); variants are interleaved within each repeat so that load
drifting over the run hits them alike. A watcher that stops before the training ends fails the run. Training speed is read from its own metrics: the mean
step time over the logged intervals after the first (which holds compilation). The watcher is stopped
when training ends: only the training's speed is measured. Prints a table and writes JSON.

    python launch/watcher_overhead.py --output=docs/benchmarks/watcher_overhead.json \\
        [--steps=1500 --ckpt_every=500] [--processes=1,2] [--watchers=idle,nice10] [--repeats=1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/trifeatures.py:cpu,ood=true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(module: str, workdir: str, processes: int, flags: list[str], log_prefix: str) -> list[subprocess.Popen]:
    """`python -m module` as one process, or as `processes` processes of one job (one CPU device each)."""
    base = [sys.executable, "-m", module, f"--config={CONFIG}", f"--workdir={workdir}", *flags]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    if processes == 1:
        commands = [base]
    else:
        address = f"127.0.0.1:{free_port()}"
        commands = [base + [f"--coordinator_address={address}", f"--num_processes={processes}", f"--process_id={i}"]
                    for i in range(processes)]
    return [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(f"{log_prefix}.{i}.out", "w"),
                             stderr=subprocess.STDOUT) for i, cmd in enumerate(commands)]


def training_speed(workdir: str) -> dict[str, float]:
    """Mean seconds per step over the logged intervals after the first, from metrics/train.jsonl."""
    with open(os.path.join(workdir, "metrics", "train.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps = [r["step"] for r in rows]
    seconds = [r["step_time"] * (s - p) for r, s, p in zip(rows[1:], steps[1:], steps[:-1])]
    return {"seconds_per_step": sum(seconds) / (steps[-1] - steps[0]), "steps_timed": steps[-1] - steps[0]}


def watcher_flags(watcher: str) -> list[str]:
    """`idle` -> the watcher's default scheduling (SCHED_IDLE); `niceN` -> normal scheduling at nice N."""
    if watcher == "idle":
        return ["--idle"]
    if watcher.startswith("nice") and watcher[4:].isdigit():
        return ["--noidle", f"--nice={watcher[4:]}"]
    raise SystemExit(f"error: --watchers: {watcher!r} is neither 'idle' nor 'niceN'")


def one_run(args, processes: int, watcher_kind: str | None, scratch: str, tag: str) -> dict[str, object]:
    workdir = os.path.join(scratch, tag)
    os.makedirs(workdir)
    train_flags = [f"--config.num_steps={args.steps}", f"--config.ckpt_every={args.ckpt_every}",
                   f"--config.log_every={args.log_every}", "--config.keep_ckpts=3"]
    if args.data_dir:
        train_flags.append(f"--config.data.data_dir={args.data_dir}")
    watcher: list[subprocess.Popen] = []
    if watcher_kind is not None:
        eval_flags = watcher_flags(watcher_kind) + ["--timeout=0"] + train_flags[:1] + train_flags[4:]
        watcher = job("comm_jax.evaluate", workdir, processes, eval_flags, os.path.join(scratch, f"{tag}.eval"))
    started = time.time()
    trainers = job("comm_jax.train", workdir, processes, train_flags, os.path.join(scratch, f"{tag}.train"))
    codes = [p.wait() for p in trainers]
    wall = time.time() - started
    failed = [i for i, p in enumerate(watcher) if p.poll() is not None]
    for p in watcher:
        p.terminate()
    for p in watcher:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    if any(codes):
        log = open(os.path.join(scratch, f"{tag}.train.0.out")).read()[-3000:]
        raise SystemExit(f"training {tag} failed (exit codes {codes}):\n{log}")
    if failed:
        log = open(os.path.join(scratch, f"{tag}.eval.{failed[0]}.out")).read()[-3000:]
        raise SystemExit(f"the watcher of {tag} stopped before the training ended:\n{log}")
    evaluated = 0
    eval_log = os.path.join(workdir, "metrics", "eval.jsonl")
    if os.path.exists(eval_log):
        evaluated = sum(1 for line in open(eval_log) if line.strip())
    return {"processes": processes, "watcher": watcher_kind, "wall_seconds": wall,
            "checkpoints_evaluated_during_training": evaluated, **training_speed(workdir)}


def summarise(runs: list[dict[str, object]]) -> list[dict[str, object]]:
    rows = []
    for processes in sorted({r["processes"] for r in runs}):
        alone = [r["seconds_per_step"] for r in runs if r["processes"] == processes and r["watcher"] is None]
        base = statistics.median(alone)
        kinds = list(dict.fromkeys(r["watcher"] for r in runs if r["watcher"] is not None))   # first-seen order
        for kind in [None] + kinds:
            same = [r for r in runs if r["processes"] == processes and r["watcher"] == kind]
            median = statistics.median(r["seconds_per_step"] for r in same)
            rows.append({"processes": processes, "watcher": "none" if kind is None else kind,
                         "ms_per_step": 1000 * median, "slowdown_percent": 100 * (median / base - 1),
                         "evaluated_during_training": statistics.median(
                             r["checkpoints_evaluated_during_training"] for r in same),
                         "repeats": len(same)})
    return rows


def markdown(rows: list[dict[str, object]], meta: dict[str, object]) -> str:
    lines = [f"Training `{CONFIG}` for {meta['steps']} steps (checkpoint every {meta['ckpt_every']}) alone and "
             f"with the evaluation watcher beside it; {meta['host_cores']}-core host, load average "
             f"{meta['load_at_start']} at start and {meta.get('load_at_end', '-')} at the end, {meta['date']}. Median over {meta['repeats']} repeat(s) of the "
             "mean step time after the first logged interval.", "",
             "| training processes | watcher | ms/step | slowdown | checkpoints evaluated while training |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['processes']} | {r['watcher']} | {r['ms_per_step']:.0f} | "
                     f"{r['slowdown_percent']:+.1f}% | {r['evaluated_during_training']:g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="JSON file to write (a .md beside it)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--ckpt_every", type=int, default=500)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--watchers", default="idle,nice10",
                        help="the watcher priorities to measure, comma-separated: idle (SCHED_IDLE), niceN")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch work directories")
    args = parser.parse_args()

    processes = [int(p) for p in args.processes.split(",")]
    kinds = args.watchers.split(",")
    for kind in kinds:
        watcher_flags(kind)
    scratch = tempfile.mkdtemp(prefix="watcher_overhead_")
    load = os.getloadavg()
    runs = []
    try:
        for repeat in range(args.repeats):
            variants = [None] + kinds
            variants = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
            for p in processes:
                for kind in variants:
                    tag = f"p{p}-{kind or 'alone'}-r{repeat}"
                    print(f"run {tag} ...", flush=True)
                    runs.append({"repeat": repeat, **one_run(args, p, kind, scratch, tag)})
                    print(f"  {1000 * runs[-1]['seconds_per_step']:.0f} ms/step", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = summarise(runs)
    meta = {"config": CONFIG, "steps": args.steps, "ckpt_every": args.ckpt_every, "repeats": args.repeats,
            "command": " ".join(sys.argv), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "host_cores": os.cpu_count(),
            "load_at_start": "/".join(f"{x:.2f}" for x in load),
            "load_at_end": "/".join(f"{x:.2f}" for x in os.getloadavg())}
    text = markdown(rows, meta)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({**meta, "rows": rows, "runs": runs}, f, indent=2)
        with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
