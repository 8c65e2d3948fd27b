"""Readers of tensor checkpoint files into NumPy, with no torch or safetensors at run time:
safetensors files, and torch zip archives of pickled state dicts (a restricted unpickler that builds
tensors and plain containers only, and refuses any other object the pickle asks for)."""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model, named in the message."""


class UnsafePickleError(CheckpointError):
    """The pickle in a torch archive asks for a callable or class outside the allowed set."""


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: bfloat16 is the upper half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


_SAFETENSORS_DTYPES = {"F64": "f8", "F32": "f4", "F16": "f2", "BF16": "u2", "I64": "i8", "I32": "i4",
                       "I16": "i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a `.safetensors` file (8-byte little-endian header length, JSON header
    `{name: {dtype, shape, data_offsets}}`, raw little-endian bytes); F16/BF16 become float32."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (header length {header_len} exceeds the file)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {err})") from None
        data = f.read()
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list) and
                isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2):
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}: {info!r}")
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not 0 <= start <= end <= len(data) or end - start != np.dtype(dtype).itemsize * int(np.prod(shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has data offsets {start}..{end} that do not fit "
                                  f"its shape {shape} and dtype {info['dtype']} or the file")
        array = np.frombuffer(data, np.dtype(dtype).newbyteorder("<"), count=int(np.prod(shape)), offset=start)
        if info["dtype"] == "BF16":
            array = _bfloat16_to_float32(array)
        elif info["dtype"] == "F16":
            array = array.astype(np.float32)
        tensors[name] = array.reshape(shape)          # read-only views of `data`, which they keep alive
    return tensors


# torch's legacy typed-storage names, as `torch.save` pickles them, and their element types
_STORAGE_DTYPES = {"DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "u2",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2's arguments -> a contiguous NumPy array (float32 for F16/BF16).
    The view is checked to lie inside its storage (as_strided itself would read any memory)."""
    if not isinstance(storage, np.ndarray) or not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise CheckpointError(f"malformed tensor record (offset {offset!r}, size {size!r}, stride {stride!r})")
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0 or (
            all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(storage)):
        raise CheckpointError(f"tensor of size {tuple(size)}, stride {tuple(stride)} at offset {offset} does not "
                              f"fit its storage of {len(storage)} elements")
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
    return data


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode`, which protocol-2 pickles use to store bytes; only the latin-1 codec."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"the pickle asks for _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


_ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("_codecs", "encode"): _encode_latin1,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict: tensors become NumPy arrays read from the archive's storages."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(file)
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_CALLABLES:
            return _ALLOWED_CALLABLES[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"{self.path}: the pickle asks for {module}.{name}, which is not a tensor, "
                                f"storage or plain container; refusing to load it (only state dicts are read)")

    def persistent_load(self, pid) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self.path}: unexpected persistent id {pid!r} in the pickle")
        storage_type, key = pid[1].name, str(pid[2])
        if key not in self.storages:
            entry = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(entry)
            except KeyError:
                raise CheckpointError(f"{self.path}: storage {entry!r} is missing from the archive") from None
            dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder("<" if self.byteorder == "little" else ">")
            array = np.frombuffer(raw, dtype)
            if storage_type == "BFloat16Storage":
                array = _bfloat16_to_float32(array.astype("<u2"))
            elif storage_type == "HalfStorage":
                array = array.astype(np.float32)
            self.storages[key] = array
        return self.storages[key]


def read_torch_archive(path: str) -> Any:
    """The object a `torch.save` zip archive holds (usually a state dict), tensors as NumPy arrays."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch zip archive (files from torch < 1.6 or `_use_new_zipfile_"
                              f"serialization=False` are not read; re-save it with a recent torch)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError(f"{path}: a zip archive without data.pkl; not a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        if any(n.startswith(prefix + "code/") for n in names) or prefix + "constants.pkl" in names:
            raise CheckpointError(f"{path}: a TorchScript archive, not a state dict; load it in torch and save "
                                  f"its `state_dict()` with torch.save")
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        with archive.open(pickles[0]) as file:
            try:
                return _StateDictUnpickler(file, archive, prefix, byteorder, path).load()
            except CheckpointError as err:
                raise err if str(err).startswith(path) else type(err)(f"{path}: {err}") from None
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as err:
                raise CheckpointError(f"{path}: cannot unpickle its data.pkl: {err}") from None


def read_tensor_file(path: str) -> dict[str, np.ndarray]:
    """A flat {name: array} state dict from a `.safetensors` file or a torch archive (`.bin`/`.pt`/`.pth`),
    unwrapped from a `{"state_dict": ...}` (or `"model"`/`"module"`) dict, without `module.` prefixes."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(9)
    if magic.startswith(b"PK"):
        state = read_torch_archive(path)
    elif magic[8:9] == b"{":
        state = read_safetensors(path)
    elif magic.startswith(b"\x80"):
        raise CheckpointError(f"{path}: a bare pickle (torch < 1.6 format, or not torch at all); not read; "
                              f"re-save the state dict with a recent torch.save or as safetensors")
    else:
        raise CheckpointError(f"{path}: unknown format (neither a safetensors file nor a torch zip archive)")
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        tensors[name.removeprefix("module.")] = value
    return tensors
