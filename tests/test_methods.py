"""Methods as modules: the registry names its methods and takes new ones (by registration or by
module path) without an edit elsewhere; a new method with its own parameters trains through the same
step; each method's config checks name the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from comm_jax import config_schema, losses, methods
from comm_jax.mesh import make_mesh, put_batch
from comm_jax.methods.cmc import CMC
from comm_jax.train_step import build_train_step
from tests_support import tiny_trifeatures


class Temperature(nnx.Module):
    def __init__(self):
        self.log_temperature = nnx.Param(jnp.asarray(np.log(0.5), jnp.float32))


class LearnedTemperatureCMC(CMC):
    """CMC whose temperature is a parameter of the method: extra parameters, a view, an objective."""

    name = "learned_temperature_cmc"

    def init_extra(self, rngs):
        return Temperature()

    def scalars(self, extra):
        return {"temperature": jnp.exp(extra.log_temperature[...])}

    def objective(self, embeddings, scalars, axis_name):
        z = losses.l2_normalize(embeddings["view1"]) / jnp.sqrt(scalars["temperature"])
        return losses.cmc_loss(z, 1.0, axis_name=axis_name)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="config.loss.name must be one of .*'comm'.*'cross'"):
        methods.get("clip2")


def test_a_method_registered_elsewhere_trains_through_the_same_step_and_owns_its_parameters():
    methods.register(LearnedTemperatureCMC.name, LearnedTemperatureCMC)
    cfg = tiny_trifeatures("cmc")
    cfg.loss.name = LearnedTemperatureCMC.name
    mesh = make_mesh([("data", 8)])
    rng = np.random.default_rng(0)
    batch = {"views": {"view1": {m: rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
                                 for m in cfg.model.modalities}}}
    built = build_train_step(cfg, mesh, put_batch(batch, mesh))
    before = float(built.state.params["extra"]["log_temperature"][...])
    state, metrics = built.step(built.state, put_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"]))
    assert float(state.params["extra"]["log_temperature"][...]) != before
    # the same method by module path, without registering
    assert methods.get("test_methods:LearnedTemperatureCMC") is LearnedTemperatureCMC


@pytest.mark.parametrize("loss, change, message", [
    ("cross", lambda c: setattr(c.model, "projection", "mlp"), "projection='linear'"),
    ("comm", lambda c: setattr(c.loss, "weights", (1.0, 1.0)), "weights needs 3 entries"),
    ("comm", lambda c: setattr(c.loss, "column_chunk", c.batch_size + 1), "column_chunk must be 0"),
    ("comm", lambda c: setattr(c.model, "architecture", "towers"), "trains a 'fusion' model"),
    ("cross_self", lambda c: setattr(c.data, "views", {v: c.data.views[v] for v in ("view1", "view2")}),
     r"lacks the view\(s\) \[.weak.\]"),
    ("comm", lambda c: setattr(c.optimizer, "lr", float("nan")), "optimizer.lr must be a finite number"),
])
def test_config_checks_name_the_key(loss, change, message):
    cfg = tiny_trifeatures(loss)
    change(cfg)
    with pytest.raises(ValueError, match=message):
        config_schema.validate(cfg)
