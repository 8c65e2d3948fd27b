"""The largest-batch search of the pod plan table: which per-chip batch to compile next, from the compiles
made so far, and the loop that spends a bounded number of compiles bracketing a (row, pod)'s limit."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from comm_jax.aot_check import roofline


def predicted_max_per_chip(entry: dict[str, Any]) -> int | None:
    """Largest per-chip batch if memory beyond the state grows linearly with it, rounded down to a
    multiple of 8, from one compiled (or refused) point."""
    used = entry.get("peak_gib", entry.get("needs_gib"))
    state = entry.get("state_gib", 0.0)
    if not used or used <= state:
        return None
    per_example = (used - state) / entry["per_chip_batch"]
    best = int((entry["capacity_gib"] * roofline.USABLE_FRACTION - state) / per_example)
    return best // 8 * 8 if best >= 8 else best or None


SEARCH_COMPILES = 8        # compiles spent on each (row, pod)'s largest batch after the first
SEARCH_WITHIN = 8          # stop once the refused size is within 1/8 of the fitting one (or 8 per chip)


def next_guess(last: dict[str, Any], fits_at: int | None, refused_at: int | None, fitted: int = 0) -> int | None:
    """The next per-chip batch to compile (a multiple of 8 when 8 or more), or None when the search is done;
    `fitted`: how many of the search's own compiles have fitted so far.
    After a fitting compile: the linear prediction from it (memory beyond the state grows about linearly
    below the limit), kept under the smallest refused size. With nothing refused yet, the prediction is
    trusted once: after a search compile has fitted, a prediction above it is raised to twice the largest
    fitting size, and a prediction of nothing larger becomes one step up (1/`SEARCH_WITHIN`, at least 8
    per chip), or twice the largest fitting size once two have fitted (near its limit the compiler trades
    memory for recomputation, so memory grows slower than linearly there). After a refusal: the
    geometric midpoint of the largest fitting and the smallest refused size, or, with nothing fitting
    yet, the prediction from what the refused compile needed, kept under half of it."""
    if last["fits"]:
        guess = predicted_max_per_chip(last) or 0
        if refused_at is not None:
            guess = min(guess, refused_at - 8)
            if guess <= fits_at:
                guess = int(math.sqrt(fits_at * refused_at))
        elif guess > fits_at:
            guess = max(guess, 2 * fits_at) if fitted >= 1 else guess
        elif fitted >= 2:
            guess = 2 * fits_at
        else:
            guess = fits_at + max(8, fits_at // SEARCH_WITHIN) if fits_at >= 8 else fits_at + 1
    elif fits_at:
        guess = int(math.sqrt(fits_at * refused_at))
    else:
        guess = min(predicted_max_per_chip(last) or 0, refused_at // 2)
    guess = guess // 8 * 8 if guess >= 8 else guess
    if fits_at and refused_at and guess <= fits_at:   # the midpoint rounded down onto the fitting size
        guess = fits_at + 8 if fits_at >= 8 else fits_at + 1
    return guess if guess > (fits_at or 0) and (refused_at is None or guess < refused_at) else None


def largest_batch(table, row: str, pod: str, chips: int, known: Sequence[dict[str, Any]],
                  compile_case: Callable[[int], dict[str, Any]]) -> None:
    """The largest per-chip batch of `row` on `pod` (`chips` chips) that compiles and fits, searched from
    the compiles already made (`known`: every compile of the row on the pod so far) with the guesses of
    `next_guess`, each compiled by `compile_case(per_chip_batch)` through `table.run` (a `table.Table`:
    cases already in it are not compiled again), at most `SEARCH_COMPILES` compiles; stops when the two
    are within 1/`SEARCH_WITHIN` (or 8 per chip) of each other, so every finished search names a size
    that does not fit just above its largest fitting one."""
    known = [e for e in known if "error" not in e]   # a case the compiler rejected says nothing about memory
    fitting = [e for e in known if e["fits"]]
    refused = [e for e in known if not e["fits"]]
    fits_at = max((e["per_chip_batch"] for e in fitting), default=None)
    refused_at = min((e["per_chip_batch"] for e in refused), default=None)
    if fits_at and refused_at and refused_at - fits_at <= max(8, fits_at // SEARCH_WITHIN):
        return
    last = (max(fitting, key=lambda e: e["per_chip_batch"]) if fitting
            else min(refused, key=lambda e: e["per_chip_batch"]))
    fitted = 0
    for _ in range(SEARCH_COMPILES):
        guess = next_guess(last, fits_at, refused_at, fitted)
        if guess is None:
            return
        last = table.run({"kind": "step", "row": row, "pod": pod, "global_batch": guess * chips,
                          "search": "largest"}, lambda: compile_case(guess))
        if last["fits"]:
            fitted += 1
            fits_at = max(fits_at or 0, guess)
        else:
            refused_at = min(refused_at or guess, guess)
        if fits_at and refused_at and refused_at - fits_at <= max(8, fits_at // SEARCH_WITHIN):
            return
