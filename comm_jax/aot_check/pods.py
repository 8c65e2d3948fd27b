"""Named TPU pods (`v5e-16`, `v4-64`, `v5p-128`, ...) and their devices on a host without TPUs: the
TPU compiler in the `libtpu` wheel builds for a topology description, no chip needed."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

# Chips -> topology, for the generations named by chips (v5e, v6e: 2D torus) and by TensorCores
# (v4, v5p: two cores per chip, 3D torus), as in the Cloud TPU accelerator type names.
TOPOLOGY_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
               512: "8x8x8", 1024: "8x8x16"}
# Accelerator-type prefix -> (the topology descriptor's generation name, 2D?, cores per chip in the name).
GENERATIONS = {"v4": ("v4", False, 2), "v5p": ("v5", False, 2), "v5e": ("v5e", True, 1),
               "v6e": ("v6e", True, 1)}
# Two-core chips (v4, v5p) run as one JAX device per chip ("megacore"), as on a real pod.
MEGACORE = ("v4", "v5")
CHIPS_PER_HOST_BOUNDS = (2, 2, 1)
INSTALL_HINT = ("compiling for a TPU topology needs the TPU compiler: pip install 'comm-jax[aot]' "
                "(or: pip install 'jax[tpu]==<your jax version>', which brings the matching libtpu wheel)")


@dataclasses.dataclass(frozen=True)
class Pod:
    """A TPU slice (or `slices` of them) to compile for: `name` as users know it (v5e-16), the
    compiler's topology (`v5e:4x4`), and the number of chips (JAX devices) over all slices."""

    name: str
    topology: str
    slices: int = 1

    @property
    def chips(self) -> int:
        dims = [int(d) for d in self.topology.split(":", 1)[1].split("x")]
        chips = 1
        for d in dims:
            chips *= d
        return chips * self.slices

    @property
    def chip_config(self) -> str:
        return "megacore" if self.topology.split(":", 1)[0] in MEGACORE else "default"

    @property
    def label(self) -> str:
        return self.name if self.slices == 1 else f"{self.name} x {self.slices} slices"


def named_pods() -> list[str]:
    """Every accelerator-type name `parse_pod` knows, e.g. v5e-16, v4-64, v5p-128."""
    names = []
    for prefix, (_, flat, cores) in GENERATIONS.items():
        table = TOPOLOGY_2D if flat else TOPOLOGY_3D
        names += [f"{prefix}-{chips * cores}" for chips in table]
    return names


def parse_pod(text: str) -> Pod:
    """`v5e-16`, `v5e:4x4` or either with `,slices=K` -> Pod; raises ValueError naming the choices."""
    head, *options = [part.strip() for part in text.split(",")]
    slices = 1
    for option in options:
        key, _, value = option.partition("=")
        if key != "slices" or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--topology option {option!r}: the only option is slices=K (K >= 1)")
        slices = int(value)
    if re.fullmatch(r"v\d+[a-z]*:\d+(x\d+){1,2}", head):
        return Pod(head, head, slices)
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", head)
    if match and match.group(1) in GENERATIONS:
        generation, flat, cores = GENERATIONS[match.group(1)]
        chips, remainder = divmod(int(match.group(2)), cores)
        table = TOPOLOGY_2D if flat else TOPOLOGY_3D
        if not remainder and chips in table:
            return Pod(head, f"{generation}:{table[chips]}", slices)
    raise ValueError(f"unknown TPU topology {head!r}: use a name ({', '.join(named_pods())}) or a "
                     f"generation:shape such as v5e:4x4 or v4:2x4x4")


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def prepare_environment() -> None:
    """Before JAX starts: run on the CPU backend, keep libtpu from asking a TPU VM's metadata server
    about a chip this host does not have, and let several compiler-only processes load libtpu (its
    lockfile guards real chips, which none of them touches)."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["TPU_SKIP_MDS_QUERY"] = "1"
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def pod_devices(pod: Pod) -> list:
    """The pod's devices as the TPU compiler sees them (not runnable: for `.lower().compile()`)."""
    if not libtpu_available():
        raise RuntimeError(INSTALL_HINT)
    from jax.experimental import topologies

    description = topologies.get_topology_desc(platform="tpu", topology_name=pod.topology,
                                               chip_config_name=pod.chip_config,
                                               chips_per_host_bounds=CHIPS_PER_HOST_BOUNDS,
                                               num_slices=pod.slices)
    return list(description.devices)
