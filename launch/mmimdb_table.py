"""The paper's MM-IMDb table from frozen CLIP features: CoMM (and, with --methods, the baselines) pretrained on
the features with `configs/mmimdb.py`, and CLIP V+L (the frozen towers' own embeddings, concatenated), each
scored by a linear probe of the 23 genres on the train split, tested on the test split (weighted and macro F1,
%), printed beside the paper's numbers.

CLIP V+L reads the image tower's class token and the text tower's end-of-text token of each example, as
`load_clip` writes them: the last hidden states, before the vision tower's post-LayerNorm and both towers'
linear projections (a linear probe on them can express any probe on the projected embeddings, up to that
LayerNorm). A run whose work directory already holds
an evaluation of its final step is read, not trained again; CLIP V+L's probe is kept in ROOT/clip_frozen.json.
A run that fails is reported as such and the others go on.

    python -m comm_jax.extract_features --clip=WEIGHTS --manual_dir=DIR --output=FEATURES
    python launch/mmimdb_table.py --features=FEATURES [--variant=cpu] [--root=workdirs/mmimdb_table]
        [--methods=comm,cross] [--override num_steps=1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runs  # noqa: E402  (puts ROOT on sys.path)

METHODS = {"comm": "CoMM", "cross": "Cross (trained on the features)", "cross_self": "Cross+Self", "cmc": "CMC"}
METRICS = (("weighted-F1", "probe/genres/f1_weighted"), ("macro-F1", "probe/genres/f1_macro"))
# The paper's MM-IMDb table (linear probe on frozen CLIP features, %).
PAPER = {"CLIP V+L": {"weighted-F1": 58.9, "macro-F1": 50.9}, "CoMM": {"weighted-F1": 61.5, "macro-F1": 54.6}}


def pretrain_and_probe(args, method: str) -> dict[str, float] | None:
    """{metric title: %} of `method`'s last checkpoint, training and evaluating when needed."""
    workdir = os.path.join(args.root, method)
    arg = f"features={os.path.abspath(args.features)},loss={method}" + (",cpu" if args.variant == "cpu" else "")
    flags = [f"--config=configs/mmimdb.py:{arg}", f"--workdir={workdir}"]
    flags += [f"--config.{override}" for override in args.override]
    row = runs.last_evaluation(workdir)
    if row is None or METRICS[0][1] not in row:
        if not runs.train_and_evaluate(flags):
            return None
        row = runs.last_evaluation(workdir)
    if row is None or METRICS[0][1] not in row:
        return None
    return {title: 100.0 * row[key] for title, key in METRICS}


def frozen_clip_embeddings(features: str, split: str):
    """([N, D_image + D_text] the first image token and the end-of-text token, [N, 23] genres) of a split."""
    import numpy as np

    from input_pipeline.pipeline import load_split

    loaded = load_split("mmimdb_features", split, ["image", "text", "genres"], data_dir=os.path.join(features, "tfds"),
                        prepare=True, manual_dir=os.path.join(features, "shards"))
    image = np.stack([tokens[0] for tokens in loaded.columns["image"]]).astype(np.float32)
    text = np.stack([tokens[-1] for tokens in loaded.columns["text"]]).astype(np.float32)
    return np.concatenate([image, text], axis=1), loaded.columns["genres"]


def frozen_clip_probe(args) -> dict[str, float] | None:
    """CLIP V+L: the probe on the frozen towers' embeddings, read from ROOT/clip_frozen.json when done."""
    path = os.path.join(args.root, "clip_frozen.json")
    if os.path.exists(path):
        with open(path) as handle:
            saved = json.load(handle)
        if saved.get("features") == os.path.abspath(args.features):
            return saved["metrics"]
    from comm_jax.evaluators.linear_probe import linear_probe

    try:
        train_x, train_y = frozen_clip_embeddings(args.features, "train")
        test_x, test_y = frozen_clip_embeddings(args.features, "test")
        result = linear_probe(train_x, train_y, test_x, test_y)
    except Exception as error:      # reported as a failed row; the other rows go on
        print(f"CLIP V+L failed: {type(error).__name__}: {error}", flush=True)
        return None
    metrics = {"weighted-F1": 100.0 * result.metrics["f1_weighted"], "macro-F1": 100.0 * result.metrics["f1_macro"]}
    os.makedirs(args.root, exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"features": os.path.abspath(args.features), "metrics": metrics, "C": result.C}, handle)
    return metrics


def markdown(results: dict[str, dict[str, float] | None]) -> str:
    """Our value beside the paper's (`ours / paper`) per row and metric."""
    titles = [title for title, _ in METRICS]
    lines = ["| method | " + " | ".join(titles) + " |", "| --- |" + " --- |" * len(titles)]
    for name, values in results.items():
        cells = []
        for title in titles:
            ours = None if values is None else values.get(title)
            paper = PAPER.get(name, {}).get(title)
            cells.append(f"{'failed' if ours is None else f'{ours:.1f}'} / {'-' if paper is None else paper}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, help="the output folder of comm_jax.extract_features")
    parser.add_argument("--variant", choices=("cpu", "full"), default="full")
    parser.add_argument("--root", default="workdirs/mmimdb_table")
    parser.add_argument("--methods", default="comm")
    parser.add_argument("--no_frozen", action="store_true", help="leave out the CLIP V+L row")
    parser.add_argument("--override", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    if not os.path.isfile(os.path.join(args.features, "shards", "manifest.json")):
        parser.error(f"--features={args.features} holds no shards/manifest.json; run `python -m "
                     f"comm_jax.extract_features --clip=WEIGHTS --manual_dir=DIR --output={args.features}` first")
    results = {} if args.no_frozen else {"CLIP V+L": frozen_clip_probe(args)}
    results.update({METHODS[m]: pretrain_and_probe(args, m) for m in methods})
    table = markdown(results)
    print("MM-IMDb, linear probe of the 23 genres on frozen representations (test split, %); ours / paper\n"
          + table)
    return table


if __name__ == "__main__":
    main()
