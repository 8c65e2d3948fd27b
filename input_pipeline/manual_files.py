"""Reading the user's original data files from TFDS's `manual_dir`, failing with a message that names
the file and the field when one is missing or malformed."""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping, Sequence

import numpy as np


class MalformedFileError(ValueError):
    """An original data file that exists but does not hold what its format promises."""


def require_file(directory: os.PathLike | str, filename: str, dataset: str) -> str:
    """The path of `filename` in `directory`; FileNotFoundError naming both when it is absent."""
    path = os.path.join(os.fspath(directory), filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset}: expected the original file {filename!r} at {path} (put it in the "
                                f"manual directory, --config.data.manual_dir=DIR)")
    return path


def manual_directory(dl_manager, dataset: str, filenames: str) -> str:
    """TFDS's manual directory, or FileNotFoundError naming the directory and the files expected there."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:      # TFDS asserts the directory exists and is not empty
        raise FileNotFoundError(f"{dataset}: the manual directory {os.fspath(dl_manager._manual_dir)} does not exist "
                                f"or is empty; it should hold {filenames} (--config.data.manual_dir=DIR)") from None


def load_pickle(path: str) -> Any:
    """The object pickled in `path`; MalformedFileError naming the file when it is not a pickle."""
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as error:
        raise MalformedFileError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None


def require_field(container: Any, key: str, path: str, where: str = "") -> Any:
    """`container[key]`, or MalformedFileError naming the file, the field and the keys there are."""
    field = f"{where}[{key!r}]" if where else repr(key)
    if not isinstance(container, Mapping):
        raise MalformedFileError(f"{path}: field {where or 'top level'} should be a dict holding {key!r}, "
                                 f"got {type(container).__name__}")
    if key not in container:
        raise MalformedFileError(f"{path}: missing field {field}; it has {sorted(map(str, container))}")
    return container[key]


def require_array(value: Any, path: str, field: str, *, ndim: int | Sequence[int],
                  trailing: Sequence[int | None] = (), numeric: bool = True) -> np.ndarray:
    """`value` as an array of `ndim` axes whose last axes are `trailing` (None: any size), or
    MalformedFileError naming the file and the field, with the shape expected and the shape found."""
    try:
        array = np.asarray(value)
    except ValueError as error:     # ragged nested lists
        raise MalformedFileError(f"{path}: field {field} is not an array ({error})") from None
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    trailing = tuple(trailing)
    tail = array.shape[array.ndim - len(trailing):] if trailing else ()
    fits_tail = len(tail) == len(trailing) and all(e is None or e == s for e, s in zip(trailing, tail))
    if array.ndim not in allowed or not fits_tail:
        expected = " or ".join(f"{n} axes" for n in allowed)
        ending = f" ending in {tuple('any' if e is None else e for e in trailing)}" if trailing else ""
        raise MalformedFileError(f"{path}: field {field} has shape {array.shape}, expected {expected}{ending}")
    if numeric and not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise MalformedFileError(f"{path}: field {field} has dtype {array.dtype}, expected numbers")
    return array


def require_same_length(path: str, arrays: Mapping[str, np.ndarray]) -> int:
    """The common number of examples (first axis) of `arrays`, or MalformedFileError listing them."""
    lengths = {field: len(array) for field, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise MalformedFileError(f"{path}: fields hold different numbers of examples: {lengths}")
    return next(iter(lengths.values()))
