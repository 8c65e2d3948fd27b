"""Train-step throughput of CoMM on MM-IMDb with frozen CLIP towers, both ways: (i) on token features extracted
once (`configs/mmimdb.py:features=`, the step sees `[B, T, D]` tokens) and (ii) with the towers inside the step
(`configs/mmimdb.py:clip=`, the step sees posters `[B, S, S, 3]` and token ids `[B, L]` and runs both towers on
each of the two views). Random CLIP weights of a chosen shape are written as a Hugging Face directory first
(needs torch and transformers, as the tests do); batches are synthetic and device-resident, as `train_step`'s.

    python -m comm_jax.bench.frozen_towers [--shapes tiny,vit_b32] [--batch tiny=32,vit_b32=8] [--steps 5]
        [--output F.json --markdown F.md]

Each row: examples/s and step time (median of `--steps` synchronised steps after warm-up), compile time, and
the trainable and frozen parameter counts.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
from typing import Any, Sequence

import jax
import numpy as np

# Hugging Face CLIPConfig keyword arguments of each shape.
SHAPES = {
    "tiny": dict(text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=16),
                 vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=32, patch_size=8),
                 projection_dim=16, config="cpu"),
    # OpenAI's ViT-B/32 (151M parameters): the paper's MM-IMDb towers; the paper's fusion (width 768)
    "vit_b32": dict(text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                     num_attention_heads=8, max_position_embeddings=77, vocab_size=49408),
                    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                       num_attention_heads=12, image_size=224, patch_size=32),
                    projection_dim=512, config=""),
}
DEFAULT_BATCH = {"tiny": 32, "vit_b32": 8}


def write_random_clip(directory: str, shape: str) -> str:
    """A randomly initialised `transformers.CLIPModel` of `shape` with a byte-level tokenizer, in `directory`."""
    import torch
    import transformers

    from comm_jax.models.clip.tokenizer import END, START, byte_symbols

    symbols = byte_symbols()
    vocab = {t: i for i, t in enumerate([*symbols, *(s + "</w>" for s in symbols), START, END])}
    kwargs = {k: v for k, v in SHAPES[shape].items() if k != "config"}
    text = dict(vocab_size=len(vocab), bos_token_id=vocab[START], eos_token_id=vocab[END], pad_token_id=0)
    text.update(kwargs["text_config"])
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(**{**kwargs, "text_config": text})).eval()
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return directory


def write_manifest(directory: str, weights: str) -> str:
    """A features directory holding only the manifest of what `extract_features` would write for `weights`."""
    from comm_jax.models.clip_encoders import cached_clip

    clip = cached_clip(weights)
    shards = os.path.join(directory, "shards")
    os.makedirs(shards, exist_ok=True)
    manifest = {"image_tokens": [1 + clip.vision_spec.grid ** 2, clip.vision_spec.width],
                "text_tokens": [clip.context_length, clip.text_spec.width], "splits": {}}
    with open(os.path.join(shards, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return directory


def measure(cfg, mesh, *, steps: int, warmup: int) -> dict[str, Any]:
    """Examples/s, step time and compile time of the config's train step on a synthetic batch."""
    from comm_jax.bench.timing import median_time, timed_compile
    from comm_jax.bench.train_step import synthetic_batch
    from comm_jax.train_state import frozen_mask
    from comm_jax.train_step import build_train_step

    batch = synthetic_batch(cfg, cfg.batch_size, mesh)
    built = build_train_step(cfg, mesh, batch)
    state = built.state
    leaves, frozen = jax.tree.leaves(state.params), jax.tree.leaves(frozen_mask(state.params))
    counts = {"trainable_params": int(sum(np.size(x) for x, f in zip(leaves, frozen) if not f)),
              "frozen_params": int(sum(np.size(x) for x, f in zip(leaves, frozen) if f))}
    compiled, compile_s = timed_compile(built.step, state, batch)

    def one_step():
        nonlocal state
        state, metrics = compiled(state, batch)
        return state, metrics

    timing = median_time(one_step, steps, warmup)
    del state, batch, compiled
    gc.collect()
    return {"batch_size": cfg.batch_size, "compile_s": compile_s, "step_s": timing["median_s"],
            "step_times_s": timing["times_s"], "examples_per_s": cfg.batch_size / timing["median_s"]} | counts


def run(shapes: Sequence[str], batches: dict[str, int], *, steps: int, warmup: int, root: str) -> list[dict]:
    from comm_jax.benchmark import REPO_ROOT, load_config
    from comm_jax.mesh import make_mesh

    config_file = os.path.join(REPO_ROOT, "configs", "mmimdb.py")
    mesh = make_mesh([("data", -1)])
    rows = []
    print(HEADER, flush=True)
    for shape in shapes:
        weights = write_random_clip(os.path.join(root, f"clip_{shape}"), shape)
        features = write_manifest(os.path.join(root, f"features_{shape}"), weights)
        variant = SHAPES[shape]["config"]
        for path, arg in (("features", f"features={features}"), ("in_step", f"clip={weights}")):
            cfg = copy.deepcopy(load_config(f"{config_file}:" + ",".join(a for a in (arg, variant) if a)))
            cfg.batch_size = batches.get(shape, DEFAULT_BATCH[shape])
            row = {"shape": shape, "path": path, "config": f"configs/mmimdb.py:{arg.split('=')[0]}=..."
                   + (f",{variant}" if variant else "")} | measure(cfg, mesh, steps=steps, warmup=warmup)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (f"{'shape':8s} {'path':9s} {'batch':>5s} {'ex/s':>9s} {'step ms':>9s} {'compile s':>9s} "
          f"{'trainable':>10s} {'frozen':>11s}")


def format_row(row: dict[str, Any]) -> str:
    return (f"{row['shape']:8s} {row['path']:9s} {row['batch_size']:5d} {row['examples_per_s']:9.1f} "
            f"{row['step_s'] * 1e3:9.1f} {row['compile_s']:9.1f} {row['trainable_params']:10,d} "
            f"{row['frozen_params']:11,d}")


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = ["| CLIP shape | path | batch | examples/s | step ms | compile s | trainable params | frozen params |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["rows"]:
        lines.append(f"| {r['shape']} | {r['path']} | {r['batch_size']} | {r['examples_per_s']:.1f} | "
                     f"{r['step_s'] * 1e3:.1f} | {r['compile_s']:.1f} | {r['trainable_params']:,} | "
                     f"{r['frozen_params']:,} |")
    lines += ["", f"Machine: {machine['processor']}, {machine['host_cores']} cores, jax {machine['jax']} "
              f"({machine['backend']}), {machine['date']}; load average at start {machine['load_average_at_start']}, "
              f"at end {machine['load_average_at_end']}. Command: `{' '.join(machine['argv'])}`."]
    return "\n".join(lines) + "\n"


def _batches(text: str | None) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in (text or "").split(",") if item)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m comm_jax.bench.frozen_towers", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="tiny,vit_b32", help=f"comma-separated, of {tuple(SHAPES)}")
    p.add_argument("--batch", help=f"SHAPE=N,... global batch per shape (default {DEFAULT_BATCH})")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--workdir", help="where the random weights are written (default: a temporary directory)")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the table as Markdown here")
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"error: unknown shapes {unknown}; known: {tuple(SHAPES)}")
    load = os.getloadavg()
    results: dict[str, Any] = {"machine": {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "processor": platform.processor() or platform.machine(), "host_cores": os.cpu_count(),
        "jax": jax.__version__, "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(), "load_average_at_start": load, "argv": ["python", "-m",
                                                                                     "comm_jax.bench.frozen_towers",
                                                                                     *sys.argv[1:]]}}
    with tempfile.TemporaryDirectory() as tmp:
        results["rows"] = run(shapes, _batches(args.batch), steps=args.steps, warmup=args.warmup,
                              root=args.workdir or tmp)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1, default=str)
        print(f"wrote {args.output}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results))
        print(f"wrote {args.markdown}")
    return results


if __name__ == "__main__":
    main()
