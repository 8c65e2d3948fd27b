"""Draws Bimodal Trifeatures pairs next to their two SimCLR-augmented training views.

    python docs/make_pairs_figure.py --config bimodal_trifeatures/64px --output docs/trifeatures_pairs.png

Each row is one pair: image_1 and its views 1 and 2, then image_2 and its views, titled with the
pair's labels. Views use the training pipeline's seeds for epoch 0 (without the normalisation,
so they can be shown).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

# Run as a plain script from anywhere: the repository root holds the `input_pipeline` package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import input_pipeline  # noqa: E402,F401  (registers the TFDS builders)
from configs.common import simclr_image_ops  # noqa: E402
from input_pipeline import augment, pipeline  # noqa: E402

IMAGES = ("image_1", "image_2")
LABELS = ("shape", "texture_1", "texture_2", "color_1", "color_2", "synergy")


def label_text(features: tfds.features.FeaturesDict, loaded: pipeline.LoadedSplit,
               index: int, key: str) -> str:
    value = int(loaded.columns[key][index])
    feature = features[key]
    return feature.int2str(value) if key != "synergy" and feature.names else str(value)


def pick_pairs(synergy: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` random pair indices, a third of them with synergy = 1 when the split has some."""
    rng = np.random.default_rng(seed)
    synergistic = np.flatnonzero(synergy == 1)
    chosen = rng.choice(synergistic, min(count // 3, len(synergistic)), replace=False)
    others = rng.choice(np.flatnonzero(synergy != 1), count - len(chosen), replace=False)
    return np.concatenate([others, chosen])


def draw(config: str, data_dir: str | None, num_pairs: int, seed: int, output: str) -> None:
    """Writes a [num_pairs x 6] grid of raw images and augmented views to `output`."""
    features = tfds.builder(config, data_dir=data_dir).info.features
    loaded = pipeline.load_split(config, "train", IMAGES + LABELS, data_dir=data_dir)
    size = loaded.image_shapes["image_1"][0]
    show_views = augment.parse(simclr_image_ops(size).removesuffix("|normalize"))
    indices = pick_pairs(loaded.columns["synergy"], num_pairs, seed)

    figure, axes = plt.subplots(num_pairs, 6, figsize=(12, 2.2 * num_pairs), squeeze=False)
    for row, index in enumerate(indices.tolist()):
        text = {key: label_text(features, loaded, index, key) for key in LABELS}
        attributes = {"image_1": f"{text['texture_1']} {text['color_1']}",
                      "image_2": f"{text['texture_2']} {text['color_2']}"}
        for block, modality in enumerate(IMAGES):
            raw = tf.io.decode_image(loaded.columns[modality][index], channels=3)
            panels = [augment.to_unit_float(raw)] + [
                show_views(raw, pipeline.example_seed(seed, 0, index, view, modality))
                for view in (1, 2)]
            titles = [f"{modality}: {text['shape']}\n{attributes[modality]}", "view 1", "view 2"]
            for column, (panel, title) in enumerate(zip(panels, titles)):
                axis = axes[row, 3 * block + column]
                axis.imshow(np.clip(panel.numpy(), 0.0, 1.0))
                axis.set_title(title, fontsize=8)
                axis.set_xticks([])
                axis.set_yticks([])
        axes[row, 0].set_ylabel(f"pair {loaded.ids[index]}\nsynergy={text['synergy']}", fontsize=8)
    figure.suptitle(f"{config}: pairs and their two augmented views (seed {seed}, epoch 0)")
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bimodal_trifeatures/64px")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__),
                                                         "trifeatures_pairs.png"))
    args = parser.parse_args(argv)
    draw(args.config, args.data_dir, args.pairs, args.seed, args.output)


if __name__ == "__main__":
    main()
