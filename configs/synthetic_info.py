"""CoMM or a baseline on `synthetic_info`: two 100-d vector modalities with controlled shared, unique and
synergistic information about the label (input_pipeline/synthetic_info.py).

get_config(arg) tokens (comma-separated):
  cpu          the variant sized for a 2-core CPU: width 64, 600 steps
  loss=NAME    comm (default), cross, cross_self, factorcl (a method of comm_jax.methods); FactorCL's
               view1 is the example as it is, its view2 the strong view, as the reference
  mix=NAME     the builder config: which information the label holds (redundant, unique1, unique2,
               synergy, redundant_unique1, unique1_synergy, redundant_synergy, redundant_unique1_synergy
               (default), synergy_noisy)
  remove=B     strong views resample latent block B of both modalities (`shared` or `unique`, strength 1):
               the controlled augmentation that makes B view-specific noise (default: none)
  sweep=true   also probe, and decompose, the label of every noise-free mix (`SWEEP_MIXES`): the vectors
               are the same in every such mix and pretraining reads no label, so one pretraining serves
               them all (metrics `probe_<mix>/label`, `pid_<mix>/label/{R,U1,U2,S}`; plus `probe/U2`)

Each modality goes through an MLP encoder (100 -> 256 -> 256 -> latent); CoMM fuses the two
encodings as one token each. Views are drawn in tf.data: Gaussian noise and random entry drops, as
FactorCL's synthetic augmentations. Evaluation: linear probes of every task label and of the config's
`label`, and the PID of the representations (`pid` evaluator).
"""

from __future__ import annotations

import ml_collections

from comm_jax import methods
from configs import common

MIXES = ("redundant", "unique1", "unique2", "synergy", "redundant_unique1", "unique1_synergy", "redundant_synergy",
         "redundant_unique1_synergy", "synergy_noisy")
# The mixes whose vectors are identical (no nuisance noise): only their `label` differs.
SWEEP_MIXES = ("redundant", "redundant_unique1", "unique1", "unique1_synergy", "synergy", "redundant_synergy",
               "redundant_unique1_synergy")
REMOVABLE = ("none", "shared", "unique")
MODALITIES = ("x1", "x2")
TRAIN_EXAMPLES = 10_000


def _view_ops(remove: str) -> dict[str, dict[str, str]]:
    noise = "gaussian_noise(std=0.3, p=0.8)|drop_steps(fraction=(0.0, 0.1), p=0.5)"
    strong = {m: noise for m in MODALITIES}
    if remove != "none":
        strong = {m: f"resample_latent(block='{remove}', modality={i + 1}, strength=1.0)|{noise}"
                  for i, m in enumerate(MODALITIES)}
    weak = {m: "gaussian_noise(std=0.1, p=0.5)" for m in MODALITIES}
    return {"view1": strong, "view2": strong, "weak": weak}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = common.parse_arg(arg, known=("cpu", "loss", "mix", "remove", "sweep"))
    cpu = common.as_bool(tokens.get("cpu", "false"), "cpu")
    mix = tokens.get("mix", "redundant_unique1_synergy")
    if mix not in MIXES:
        raise ValueError(f"config argument mix={mix!r} must be one of {MIXES}")
    remove = tokens.get("remove", "none")
    if remove not in REMOVABLE:
        raise ValueError(f"config argument remove={remove!r} must be one of {REMOVABLE}")

    c = common.base_config()
    c.loss.name = common.method_name(tokens)
    method = methods.get(c.loss.name)
    c.batch_size = 128
    c.num_steps = 600 if cpu else 100 * TRAIN_EXAMPLES // c.batch_size
    c.optimizer.lr = 1e-3
    c.log_every = 50
    c.ckpt_every = 300 if cpu else 2000
    latent = 64 if cpu else 128
    encoder = dict(encoder="mlp", encoder_args=dict(hidden=(256, 256), out=latent), input_shape=(100,))
    if method.architecture == "fusion":
        c.model = ml_collections.ConfigDict(dict(architecture="fusion", width=latent, depth=1, heads=4, mlp_ratio=4,
                                                 head_hidden=256, head_out=latent))
        encoder["adapter"] = "vector"
    elif c.loss.name == "cross":
        c.model = ml_collections.ConfigDict(dict(architecture="towers", latent=latent, projection="linear",
                                                 head_out=latent, representation="projected"))
    else:
        c.model = ml_collections.ConfigDict(dict(architecture="towers", latent=latent, projection="mlp",
                                                 head_hidden=2 * latent, head_out=latent, representation="pooled"))
    c.model.modalities = MODALITIES
    c.model.encoders = {m: dict(encoder) for m in MODALITIES}
    c.model.precision = c.get_ref("precision")

    ops = _view_ops(remove)
    if c.loss.name == "factorcl":
        # FactorCL pairs each example as it is (view1) with one augmented view (view2); its CLUB
        # critics take 5 Adam steps per step, as the reference's.
        ops["view1"] = {m: "" for m in MODALITIES}
        c.loss.critic_hidden = 128 if cpu else 512
        c.loss.critic_steps = 5
    c.data = ml_collections.ConfigDict(dict(
        name=f"synthetic_info/{mix}",
        data_dir=ml_collections.config_dict.placeholder(str),
        prepare=True,                 # generated offline on first use (a few seconds)
        train_split="train",
        modalities={m: m for m in MODALITIES},
        views={v: ops[v] for v in method.views},
        augment_on_device=False,
        labels=("redundant", "unique1", "unique2", "synergy", "label"),
    ))
    c.evals.tasks = {"R": "redundant", "U1": "unique1", "U2": "unique2", "S": "synergy", "label": "label"}
    c.evals.task_means = {"U": ("U1", "U2")}
    c.evals.evaluators = {
        "probe": {"type": "linear_probe"},
        "pid": {"type": "pid"},
    }
    if common.as_bool(tokens.get("sweep", "false"), "sweep"):
        # The mixes' labels include the redundant, unique1 and synergy tasks themselves: the default
        # probe keeps U2 only, and the PIDs are those of each mix's label (no fused ones), to keep the
        # evaluation of a 2-core CPU run within minutes.
        c.evals.datasets = {m: f"synthetic_info/{m}" for m in SWEEP_MIXES}
        c.evals.evaluators = {"probe": {"type": "linear_probe", "tasks": ("U2",)}}
        for m in SWEEP_MIXES:
            c.evals.evaluators[f"probe_{m}"] = {"type": "linear_probe", "dataset": m, "tasks": ("label",)}
            c.evals.evaluators[f"pid_{m}"] = {"type": "pid", "dataset": m, "tasks": ("label",), "fused": False}
    return c
