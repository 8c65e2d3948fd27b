"""The collectives of a compiled program, read from its HLO text (`compiled.as_text()`): kind, the
buffer each one carries per device, the size of its device group, and the bytes one device sends.

Bytes sent follow the bandwidth-optimal (ring) algorithms, per device for a group of g devices and
a buffer of S bytes (the full, gathered or reduced, buffer): all-gather, all-to-all S (g-1)/g;
reduce-scatter S (g-1)/g of its input (its output is S/g); all-reduce 2 S (g-1)/g; collective-permute S.
A collective inside a loop body is counted once, not once per iteration.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.*?)\s+"
                          r"(?P<op>all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
                          r"(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    buffer_bytes: int          # S: the full buffer (gathered, reduced) on one device
    group_size: int

    @property
    def sent_bytes(self) -> float:
        g, s = self.group_size, self.buffer_bytes
        if self.kind == "collective-permute":
            return float(s)
        if g <= 1:
            return 0.0
        share = s * (g - 1) / g
        return 2 * share if self.kind == "all-reduce" else share


def array_bytes(shape_text: str) -> list[int]:
    """Bytes of each array in an HLO shape (`f32[8,128]{1,0}` or a tuple of them), in order."""
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in DTYPE_BYTES:
            count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
            out.append(int(count * DTYPE_BYTES[dtype]))
    return out


def group_size(line: str, n_devices: int) -> int:
    """Devices per group of a collective's `replica_groups` (explicit lists, iota `[groups,size]<=[..]`,
    or named mesh axes); all `n_devices` when the groups are empty."""
    explicit = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
    if explicit:
        return len([d for d in explicit.group(1).split(",") if d])
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if iota:
        return int(iota.group(2))
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if mesh:
        sizes = {name: int(size) for name, size in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
        chosen = re.findall(r"'([^']+)'", mesh.group(2))
        return math.prod(sizes.get(axis, 1) for axis in chosen)
    return n_devices


def buffer_bytes(kind: str, is_start: bool, shape_text: str) -> int:
    """S for one instruction. Async starts return (operands, outputs[, context scalars]): an
    all-gather carries its outputs, the others their operands."""
    sizes = array_bytes(shape_text)
    if not is_start:
        return sum(sizes)
    arrays = [s for s, (dtype, dims) in zip(sizes, _ARRAY.findall(shape_text)) if dims or dtype not in ("u32", "s32")]
    half = len(arrays) // 2 or 1
    return sum(arrays[half:]) if kind == "all-gather" else sum(arrays[:half])


def parse(hlo_text: str, n_devices: int) -> list[Collective]:
    """Every collective of the module text, in order."""
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        kind, is_start = match.group("op"), bool(match.group("start"))
        size = buffer_bytes(kind, is_start, match.group("shape"))
        group = 1 if kind == "collective-permute" else group_size(line, n_devices)
        if kind == "reduce-scatter":
            size *= group          # the instruction shows its scattered output: S/g
        found.append(Collective(kind, size, group))
    return found


def summarize(collectives: Iterable[Collective]) -> dict[str, dict[str, float]]:
    """kind -> {count, buffer_bytes, sent_bytes} summed over the program, kinds with none left out."""
    out: dict[str, dict[str, float]] = {}
    for c in collectives:
        entry = out.setdefault(c.kind, {"count": 0, "buffer_bytes": 0, "sent_bytes": 0.0})
        entry["count"] += 1
        entry["buffer_bytes"] += c.buffer_bytes
        entry["sent_bytes"] += c.sent_bytes
    return out
