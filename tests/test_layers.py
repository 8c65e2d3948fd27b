"""The package's imports point one way: core <- data <- training / analysis <- programs <- tools.
Every module of `comm_jax` and `input_pipeline` is placed in a layer; each import (at module level or
inside a function) may only reach its own layer or one below, never a sibling group, and never the
experiment configs."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (rank, group, module prefixes). A module belongs to the longest prefix naming it or a parent package.
LAYERS = (
    (0, "core", ("comm_jax", "comm_jax.batch", "comm_jax.config_schema", "comm_jax.mesh", "comm_jax.losses",
                 "comm_jax.checkpoints", "comm_jax.device_augment", "comm_jax.op_spec", "comm_jax.view_recipes",
                 "comm_jax.peaks", "comm_jax.metrics_log", "comm_jax.distributed", "comm_jax.models",
                 "comm_jax.methods", "comm_jax.cli_errors", "comm_jax.lease", "comm_jax.divergence",
                 "comm_jax.resume", "comm_jax.retention", "comm_jax.watch_progress", "comm_jax.priority",
                 # NumPy-only measures and the exact BROJA solver: data builders store ground-truth PIDs.
                 "comm_jax.information.pid", "comm_jax.information.measures")),
    (1, "data", ("input_pipeline",)),
    (2, "training", ("comm_jax.train_state", "comm_jax.train_step")),
    (2, "analysis", ("comm_jax.evaluators", "comm_jax.uncertainty", "comm_jax.information")),
    (3, "programs", ("comm_jax.train", "comm_jax.evaluate", "comm_jax.export", "comm_jax.extract_features")),
    (4, "tools", ("comm_jax.benchmark", "comm_jax.bench", "comm_jax.aot_check", "comm_jax.flops")),
)
# Programs that must not reach training code: evaluation and export load models without it.
NO_TRAINING = ("comm_jax.evaluate", "comm_jax.export")


def layer_of(module: str):
    best = None
    for rank, group, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[2])):
                best = (rank, group, prefix)
    return best


def modules(root=ROOT):
    for package in ("comm_jax", "input_pipeline"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def is_module(root: pathlib.Path, name: str) -> bool:
    path = root / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(name: str, path: pathlib.Path, root=ROOT):
    """Absolute names of the project modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                # `from pkg import submodule` imports the submodule; `from module import name` the module
                yield (full if is_module(root, full) else base), node.lineno


PROJECT = ("comm_jax", "input_pipeline", "configs")


def test_every_module_has_a_layer():
    assert len(list(modules())) > 40
    unplaced = [name for name, _ in modules() if layer_of(name) is None]
    assert not unplaced, f"place these modules in a layer of tests/test_layers.py: {unplaced}"


def violations(root=ROOT):
    found = []
    for name, path in modules(root):
        rank, group, _ = layer_of(name)
        for target, line in imports(name, path, root):
            if target.split(".")[0] not in PROJECT:
                continue
            where = f"{path.relative_to(root)}:{line} imports {target}"
            if target.split(".")[0] == "configs":
                found.append(f"{where}: the package never imports the experiment configs")
                continue
            t_rank, t_group, _ = layer_of(target)
            if t_rank > rank:
                found.append(f"{where}: {group} (layer {rank}) reaches up to {t_group} (layer {t_rank})")
            elif t_rank == rank and t_group != group:
                found.append(f"{where}: {group} reaches its sibling {t_group}")
            elif t_group == "training" and any(name == p or name.startswith(p + ".") for p in NO_TRAINING):
                found.append(f"{where}: evaluation and export stay free of training code")
    return found


def test_imports_point_down_only():
    assert violations() == []


def test_the_checker_catches_an_arrow_the_wrong_way(tmp_path):
    """An evaluator that imports the train step, and a core module that imports a program, are found."""
    fake = tmp_path / "comm_jax"
    (fake / "evaluators").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "evaluators" / "__init__.py").write_text("from comm_jax.train_step import build_train_step\n")
    (fake / "losses.py").write_text("def f():\n    from comm_jax import evaluate\n")
    (fake / "train_step.py").write_text("")
    (fake / "evaluate.py").write_text("")
    (tmp_path / "input_pipeline").mkdir()
    (tmp_path / "input_pipeline" / "__init__.py").write_text("import configs.common\n")
    found = "\n".join(violations(tmp_path))
    assert "analysis reaches its sibling training" in found
    assert "core (layer 0) reaches up to programs" in found
    assert "never imports the experiment configs" in found


@pytest.mark.parametrize("module", ["comm_jax.export", "comm_jax.evaluators.frozen_model"])
def test_export_loading_needs_jax_flax_and_numpy_only(module):
    """The loader's import closure within the project, and the third-party packages it names."""
    seen, stack, external = set(), [module], set()
    paths = dict(modules())
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent:                                   # importing a submodule runs its packages first
            stack.append(parent)
        tree = ast.parse(paths[name].read_text())
        for node in tree.body:                       # module-level imports only: what `import` loads
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for target in names:
                top = target.split(".")[0]
                if top in ("comm_jax", "input_pipeline"):
                    stack.extend(t for t in (target,) if t in paths)
                    if isinstance(node, ast.ImportFrom):   # `from pkg import submodule`
                        stack.extend(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in paths)
                elif top not in ("__future__",):
                    external.add(top)
    allowed = {"jax", "flax", "numpy", "ml_collections", "collections", "dataclasses", "functools", "importlib",
               "itertools", "json", "math", "os", "re", "typing", "zipfile", "zlib"}
    assert external <= allowed, external - allowed
