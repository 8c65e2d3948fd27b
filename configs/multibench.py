"""CoMM or a baseline on MultiBench, built from the user's original files (input_pipeline/multibench_*.py).

get_config(arg) tokens (comma-separated; the first names the dataset):
  DATASET        mosi, mosei, ur_funny, mustard (affect: vision, text, audio sequences), mimic (tabular +
                 hourly time series), vision_touch (image, force, proprioception)
  cpu            the variant sized for a 2-core CPU: one-layer encoders, narrow widths, 300 steps
  loss=NAME      comm (default), cross, cross_self, cmc
  modalities=M   2 (default) or 3, or names joined by '+': affect `vision+text` (2) / `vision+text+audio` (3);
                 vision_touch `image+force` (2) / `image+force+proprio` (3); mimic has `tabular+timeseries` only
  task=K         mimic only: the probed label, 7 (default, ICD-9 group 7 as the paper) or 0..19, or -1 (mortality)

The original files are read from `--config.data.manual_dir=DIR` (default TFDS's
`<data_dir>/downloads/manual`): `mosi_data.pkl`, `mosei_senti_data.pkl`, `humor.pkl`, `sarcasm.pkl`,
`im.pk`, or the directory of Vision&Touch `.h5` episodes. The TFDS dataset is built on first use.

Full size follows the paper and the reference: AdamW lr 1e-3, weight decay 1e-2, batch 64, 100 epochs,
temperature 0.1. Affect: per modality MultiBench's transformer (1x1 projection to 40, 5 layers, 5 heads,
no positions, sequences up to 50 steps padded per batch with masks); MIMIC: an MLP 5-10-10 for the static
features (one token) and a GRU of 512 over the 24 hours; Vision&Touch: ResNet-18 maps (4 x 4 tokens), the
causal-convolution force encoder, the proprioception MLP 8-32-64-128-z (both MultiBench's, leaky ReLU after
every layer). CoMM fuses the tokens in a 1-layer, 8-head transformer (width 40 for affect, 512 otherwise)
with the MLP head 512 -> 256; the baselines (towers) mean-pool each sequence over its valid steps. Views:
MultiBench's augmentations, random-applied per modality with p = 0.5: drop 0-80% of the steps (features for
vectors) then Gaussian noise (std 0.1); proprioception noise only; images SimCLR's. CLIP's and Cross+Self's
unaugmented view is the example itself, as the reference.

Evaluation (comm_jax.evaluate, every checkpoint; the table reads the last one): linear probes on the
frozen Z of the train split, scored on the test split: `probe/label/accuracy` (sentiment > 0, humour,
sarcasm, the MIMIC task, V&T contact), `probe/regression/mse` (affect sentiment, V&T next end-effector pose).
"""

from __future__ import annotations

import ml_collections

from comm_jax import methods, view_recipes as recipes
from configs import common

AFFECT = ("mosi", "mosei", "ur_funny", "mustard")
DATASETS = (*AFFECT, "mimic", "vision_touch")
METHODS = ("comm", "cross", "cross_self", "cmc")
MODALITY_SETS = {
    "affect": {2: ("vision", "text"), 3: ("vision", "text", "audio")},
    "mimic": {2: ("tabular", "timeseries")},
    "vision_touch": {2: ("image", "force"), 3: ("image", "force", "proprio")},
}
# Sequence features per affect dataset (vision, audio, text), as input_pipeline.multibench_affect.DATASETS.
AFFECT_FEATURES = {"mosi": (20, 5, 300), "mosei": (35, 74, 300), "ur_funny": (371, 81, 300),
                   "mustard": (371, 81, 300)}
# About the train split sizes after cleaning; they set the steps of 100 epochs.
TRAIN_EXAMPLES = {"mosi": 1284, "mosei": 16265, "ur_funny": 7614, "mustard": 414, "mimic": 28970,
                  "vision_touch": 117600}
MAX_STEPS = 50
SEQUENCE_OPS = "drop_steps(fraction=(0.0, 0.8), p=0.5)|gaussian_noise(std=0.1, p=0.5)"
NOISE_OPS = "gaussian_noise(std=0.1, p=0.5)"
IMAGE_SIZE = 128


def _family(dataset: str) -> str:
    return "affect" if dataset in AFFECT else dataset


def _modalities(dataset: str, token: str | None) -> tuple[str, ...]:
    sets = MODALITY_SETS[_family(dataset)]
    if token is None:
        return sets[2]
    if token.isdigit():
        if int(token) not in sets:
            raise ValueError(f"config argument modalities={token}: {dataset} has {sorted(sets)} modality sets")
        return sets[int(token)]
    names = tuple(token.split("+"))
    known = max(sets.values(), key=len)
    if len(names) < 2 or len(set(names)) != len(names) or not set(names) <= set(known):
        raise ValueError(f"config argument modalities={token!r}: name 2 or more of {known} joined by '+'")
    return names


def _dataset(tokens: dict[str, str]) -> str:
    named = [t for t in tokens if t in DATASETS]
    if len(named) != 1:
        raise ValueError(f"config argument: name exactly one dataset of {DATASETS}, got {named}")
    return named[0]


def _encoders(dataset: str, modalities: tuple[str, ...], width: int, cpu: bool, fusion: bool) -> dict:
    """{modality: encoder spec}; with `fusion` each spec has the adapter that makes its tokens."""
    if dataset in AFFECT:
        features = dict(zip(("vision", "audio", "text"), AFFECT_FEATURES[dataset]))
        args = dict(width=width, depth=1 if cpu else 5, heads=5, mlp_ratio=4 if cpu else 51,
                    positional_encoding=False, max_length=MAX_STEPS)
        return {m: dict(encoder="transformer", encoder_args=args, input_shape=(MAX_STEPS, features[m]),
                        variable_length=True, adapter="identity") for m in modalities}
    if dataset == "mimic":
        return {"tabular": dict(encoder="mlp", encoder_args=dict(hidden=(10,), out=10), input_shape=(5,),
                                adapter="vector"),
                "timeseries": dict(encoder="gru", encoder_args=dict(hidden=width), input_shape=(24, 12),
                                   adapter="identity")}
    image = (dict(encoder="small_cnn", encoder_args=dict(channels=(32, 64, 96, 128, 128))) if cpu
             else dict(encoder="resnet18"))
    specs = {"image": dict(image, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
             "force": dict(encoder="causal_conv", encoder_args=dict(out=width), input_shape=(32, 6),
                           adapter="identity"),
             "proprio": dict(encoder="mlp", encoder_args=dict(hidden=(32, 64, 128), out=width,
                                                              activation="leaky_relu", final_activation=True),
                             input_shape=(8,), adapter="vector")}
    specs = {m: specs[m] for m in modalities}
    if not fusion:
        for spec in specs.values():
            spec.pop("adapter", None)
    return specs


def _strong_ops(modality: str) -> str:
    if modality == "image":
        return recipes.simclr_image_ops(IMAGE_SIZE)
    return NOISE_OPS if modality in ("tabular", "proprio") else SEQUENCE_OPS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = common.parse_arg(arg, known=(*DATASETS, "cpu", "loss", "modalities", "task"))
    dataset = _dataset(tokens)
    cpu = common.as_bool(tokens.get("cpu", "false"), "cpu")
    modalities = _modalities(dataset, tokens.get("modalities"))
    if "task" in tokens and dataset != "mimic":
        raise ValueError("config argument task= applies to mimic only")
    task = int(tokens.get("task", 7))
    if not -1 <= task <= 19:
        raise ValueError(f"config argument task={task} must be -1 (mortality) or an ICD-9 group 0..19")

    c = common.base_config()
    c.loss.name = common.method_name(tokens)
    if c.loss.name not in METHODS:
        raise ValueError(f"config argument loss={c.loss.name!r}: MultiBench runs {METHODS}")
    method = methods.get(c.loss.name)
    c.batch_size = 64
    c.num_steps = 300 if cpu else 100 * TRAIN_EXAMPLES[dataset] // c.batch_size
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-2
    c.log_every = 50 if cpu else 100
    c.ckpt_every = 150 if cpu else 2000

    width = {"affect": 40, "mimic": 64 if cpu else 512, "vision_touch": 64 if cpu else 512}[_family(dataset)]
    c.model = common.model_for(c.loss.name, width, cpu, towers_head_hidden=1024)
    c.model.modalities = modalities
    c.model.encoders = _encoders(dataset, modalities, width, cpu, method.architecture == "fusion")
    c.model.precision = c.get_ref("precision")

    ops = {"view1": {m: _strong_ops(m) for m in modalities}, "weak": {m: "" for m in modalities}}
    ops["view2"] = ops["view1"]
    if dataset == "vision_touch":
        ops["weak"] = {m: "center_crop(128)|normalize" if m == "image" else "" for m in modalities}
    builder = {"mimic": "multibench_mimic", "vision_touch": "multibench_vision_touch"}.get(
        dataset, f"multibench_affect/{dataset}")
    label = {"mimic": "mortality" if task < 0 else f"icd9_{task}", "vision_touch": "contact_next"}.get(dataset, "label")
    regression = {"vision_touch": "ee_yaw_next", "mimic": None}.get(dataset, "regression")
    c.data = ml_collections.ConfigDict(dict(
        name=builder,
        data_dir=ml_collections.config_dict.placeholder(str),
        manual_dir=ml_collections.config_dict.placeholder(str),
        prepare=True,                 # the TFDS dataset is built from the original files on first use
        train_split="train",
        modalities={m: m for m in modalities},
        views={v: ops[v] for v in method.views},
        augment_on_device=False,
        eval_ops={m: "center_crop(128)|normalize" for m in modalities if m == "image"},
    ))
    c.evals.tasks = {"label": label} | ({"regression": regression} if regression else {})
    # Plain accuracy beside the balanced one: the MultiBench tables report it.
    c.evals.evaluators = {"probe": {"type": "linear_probe", "accuracy": True}}
    return c
