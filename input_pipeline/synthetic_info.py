"""TFDS builder `synthetic_info`: two vector modalities with controlled shared, unique and synergistic
information about the label, generated offline and deterministically (FactorCL's Gaussian generator).

Latent blocks, each N(0, 0.5 I): `shared` (SHARED_DIM) in both modalities, `unique_1`, `unique_2`
(UNIQUE_DIM) in one each. Modality i is `concat(shared, unique_i) @ T_i` [100], T_i a fixed
uniform(0, 1) matrix [SHARED_DIM + UNIQUE_DIM, 100] (the same for every config, see
`mixing_matrices`), plus optional isotropic nuisance noise of std `noise`. Binary concepts are the
signs of block means: `b_s` (all of `shared`), `b_1a`, `b_2a` (first half of `unique_i`), `b_1b`,
`b_2b` (second half). Task labels stored in every config:

    redundant = b_s     unique1 = b_1a     unique2 = b_2a     synergy = b_1b xor b_2b

and `label`, the config's own label (a class index of the concepts its name lists, see `LABELS`).
`info.metadata["pid"]` holds the ground-truth PID in bits of (X1, X2; label) and of each task,
computed exactly (`pid.broja`) on the discrete generating variables X_i = (b_s, b_ia, b_ib).
Per-example latents are stored too (`latent_shared`, `latent_unique_1`, `latent_unique_2`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from comm_jax.information.pid import broja

SHARED_DIM = 10
UNIQUE_DIM = 10
MODALITY_DIM = 100
LATENT_VARIANCE = 0.5
SPLIT_SIZES = {"train": 10_000, "test": 2_000}
MIXING_SEED = 1234
SPLIT_SEEDS = {"train": 0, "test": 1}

# Each task is a function of the binary concepts {name: [n] int}.
TASKS = {
    "redundant": lambda c: c["b_s"],
    "unique1": lambda c: c["b_1a"],
    "unique2": lambda c: c["b_2a"],
    "synergy": lambda c: c["b_1b"] ^ c["b_2b"],
}
# Config name -> the tasks its `label` combines (class index = the tasks' bits, first task highest).
LABELS = {
    "redundant": ("redundant",),
    "unique1": ("unique1",),
    "unique2": ("unique2",),
    "synergy": ("synergy",),
    "redundant_unique1": ("redundant", "unique1"),
    "unique1_synergy": ("unique1", "synergy"),
    "redundant_synergy": ("redundant", "synergy"),
    "redundant_unique1_synergy": ("redundant", "unique1", "synergy"),
}


def mixing_matrices() -> tuple[np.ndarray, np.ndarray]:
    """(T_1, T_2), each [SHARED_DIM + UNIQUE_DIM, MODALITY_DIM] uniform(0, 1), fixed for all configs.
    Rows 0..SHARED_DIM-1 carry the shared block, the rest the modality's unique block."""
    rng = np.random.default_rng(MIXING_SEED)
    shape = (SHARED_DIM + UNIQUE_DIM, MODALITY_DIM)
    return rng.uniform(0.0, 1.0, shape), rng.uniform(0.0, 1.0, shape)


def sample_latents(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{"shared": [n, SHARED_DIM], "unique_1", "unique_2": [n, UNIQUE_DIM]}, N(0, 0.5 I) each."""
    scale = np.sqrt(LATENT_VARIANCE)
    return {"shared": rng.normal(size=(n, SHARED_DIM)) * scale,
            "unique_1": rng.normal(size=(n, UNIQUE_DIM)) * scale,
            "unique_2": rng.normal(size=(n, UNIQUE_DIM)) * scale}


def concepts(latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Binary concepts [n] int: signs of the block means (halves of the unique blocks)."""
    half = UNIQUE_DIM // 2

    def sign(block: np.ndarray) -> np.ndarray:
        return (block.mean(axis=1) > 0).astype(np.int64)

    return {"b_s": sign(latents["shared"]),
            "b_1a": sign(latents["unique_1"][:, :half]), "b_1b": sign(latents["unique_1"][:, half:]),
            "b_2a": sign(latents["unique_2"][:, :half]), "b_2b": sign(latents["unique_2"][:, half:])}


def label_of(tasks: tuple[str, ...], concept: dict[str, np.ndarray]) -> np.ndarray:
    """[n] class index of the bits of `tasks` (first task the highest bit)."""
    label = np.zeros_like(concept["b_s"])
    for task in tasks:
        label = 2 * label + TASKS[task](concept)
    return label


def modalities(latents: dict[str, np.ndarray], noise: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(x1, x2) [n, MODALITY_DIM] float32: each modality's blocks mixed by its T_i, plus noise."""
    t1, t2 = mixing_matrices()
    out = []
    for t, unique in ((t1, latents["unique_1"]), (t2, latents["unique_2"])):
        x = np.concatenate([latents["shared"], unique], axis=1) @ t
        out.append((x + noise * rng.normal(size=x.shape)).astype(np.float32))
    return out[0], out[1]


def ground_truth_joint(tasks: tuple[str, ...]) -> np.ndarray:
    """p[x1, x2, y] of the discrete generating variables X_i = (b_s, b_ia, b_ib) (8 values each,
    the five concepts independent fair coins) and the label of `tasks`."""
    n_classes = 2 ** len(tasks)
    joint = np.zeros((8, 8, n_classes))
    for b_s, b_1a, b_1b, b_2a, b_2b in itertools.product((0, 1), repeat=5):
        concept = {k: np.array([v]) for k, v in
                   dict(b_s=b_s, b_1a=b_1a, b_1b=b_1b, b_2a=b_2a, b_2b=b_2b).items()}
        y = int(label_of(tasks, concept)[0])
        joint[4 * b_s + 2 * b_1a + b_1b, 4 * b_s + 2 * b_2a + b_2b, y] += 1 / 32
    return joint


def ground_truth_pid(tasks: tuple[str, ...]) -> dict[str, float]:
    """{R, U1, U2, S} in bits of (X1, X2; label of `tasks`), rounded to 1e-6."""
    return {part: round(float(value), 6) for part, value in broja(ground_truth_joint(tasks)).items()}


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticInfoConfig(tfds.core.BuilderConfig):
    """The tasks the config's `label` combines, and the nuisance noise std in modality space."""

    label_tasks: tuple[str, ...] = ("redundant",)
    noise: float = 0.0


def _make_config(name: str, tasks: tuple[str, ...], noise: float = 0.0) -> SyntheticInfoConfig:
    return SyntheticInfoConfig(name=name, description=f"label = ({', '.join(tasks)}); noise std {noise}",
                               label_tasks=tasks, noise=noise)


class SyntheticInfo(tfds.core.GeneratorBasedBuilder):
    """Synthetic vectors of known PID, generated offline (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = ([_make_config(name, tasks) for name, tasks in LABELS.items()]
                       + [_make_config("synergy_noisy", LABELS["synergy"], noise=1.0)])
    DEFAULT_CONFIG_NAME = "redundant_unique1_synergy"

    def _info(self) -> tfds.core.DatasetInfo:
        tasks = self.builder_config.label_tasks
        vector = tfds.features.Tensor(shape=(MODALITY_DIM,), dtype=np.float32)
        binary = tfds.features.ClassLabel(num_classes=2)
        pid = {"label": ground_truth_pid(tasks)}
        pid.update({task: ground_truth_pid((task,)) for task in TASKS})
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "x1": vector, "x2": vector,
                "label": tfds.features.ClassLabel(num_classes=2 ** len(tasks)),
                **{task: binary for task in TASKS},
                "latent_shared": tfds.features.Tensor(shape=(SHARED_DIM,), dtype=np.float32),
                "latent_unique_1": tfds.features.Tensor(shape=(UNIQUE_DIM,), dtype=np.float32),
                "latent_unique_2": tfds.features.Tensor(shape=(UNIQUE_DIM,), dtype=np.float32),
                "id": np.int64,
            }),
            homepage="https://github.com/pliang279/FactorCL",
            metadata=tfds.core.MetadataDict(pid=pid, label_tasks=list(tasks), noise=self.builder_config.noise),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # generated, nothing to download
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        arrays = generate_split(split, self.builder_config.label_tasks, self.builder_config.noise)
        for index in range(SPLIT_SIZES[split]):
            yield index, {key: value[index] for key, value in arrays.items()}


def generate_split(split: str, tasks: tuple[str, ...], noise: float, size: int | None = None
                   ) -> dict[str, np.ndarray]:
    """Every feature of a split as [n, ...] arrays. The latents of a split are the same in every
    config (its seed depends on the split only); the noise draws follow them."""
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    n = SPLIT_SIZES[split] if size is None else size
    latents = sample_latents(n, rng)
    concept = concepts(latents)
    x1, x2 = modalities(latents, noise, rng)
    out = {"x1": x1, "x2": x2, "label": label_of(tasks, concept), "id": np.arange(n, dtype=np.int64)}
    out.update({task: fn(concept) for task, fn in TASKS.items()})
    out.update({f"latent_{k}": v.astype(np.float32) for k, v in latents.items()})
    return out
