"""BROJA PID: agreement with dit's exponential-cone BROJA solver, closed forms of the classic
distributions, the marginal identities, its certificate, and the Shannon helpers."""

import math

import numpy as np
import pytest

from comm_jax.information.measures import (
    conditional_mutual_information, entropy, mutual_information)
from comm_jax.information.pid import broja

dit = pytest.importorskip("dit")
pytest.importorskip("ecos")  # dit's exponential-cone BROJA solver runs on ECOS
from dit.pid import PID_BROJA  # noqa: E402

# dit's default BROJA solver (SLSQP) stops up to 0.02 bits from the optimum on random 3 x 3 x 3
# joints (R < 0 there); its exponential-cone program (Makkeh et al. 2018) solves them to 1e-8.
DIT_METHOD = "cone"
DIT_TOL = 1e-5
IDENTITY_TOL = 1e-6


def joint_from_rule(rule, n1: int = 2, n2: int = 2, ny: int = 2) -> np.ndarray:
    """p[x1, x2, y] with x1, x2 independent and uniform and y = rule(x1, x2)."""
    p = np.zeros((n1, n2, ny))
    for a in range(n1):
        for b in range(n2):
            p[a, b, rule(a, b)] = 1.0 / (n1 * n2)
    return p


def redundant() -> np.ndarray:
    p = np.zeros((2, 2, 2))
    p[0, 0, 0] = p[1, 1, 1] = 0.5
    return p


CLASSIC = {
    "XOR": joint_from_rule(lambda a, b: a ^ b),
    "AND": joint_from_rule(lambda a, b: a & b),
    "COPY": joint_from_rule(lambda a, b: 2 * a + b, ny=4),
    "RDN": redundant(),
    "UNQ": joint_from_rule(lambda a, b: a),
}


def binary_entropy(x: float) -> float:
    return -x * math.log2(x) - (1 - x) * math.log2(1 - x)


CLOSED_FORMS = {
    "XOR": {"R": 0.0, "U1": 0.0, "U2": 0.0, "S": 1.0},
    "AND": {"R": binary_entropy(0.25) - 0.5, "U1": 0.0, "U2": 0.0, "S": 0.5},
    "COPY": {"R": 0.0, "U1": 1.0, "U2": 1.0, "S": 0.0},
    "RDN": {"R": 1.0, "U1": 0.0, "U2": 0.0, "S": 0.0},
    "UNQ": {"R": 0.0, "U1": 1.0, "U2": 0.0, "S": 0.0},
}


def random_joint(seed: int) -> np.ndarray:
    """A seeded random p[x1, x2, y] of alphabet between 2 x 2 x 2 and 5 x 5 x 4; odd seeds get a
    sparse support (about a third of the cells zero)."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(2, 6)), int(rng.integers(2, 6)), int(rng.integers(2, 5)))
    p = rng.dirichlet(np.full(np.prod(shape), 0.5)).reshape(shape)
    if seed % 2:
        p = p * (rng.random(shape) > 0.33)
    return p / p.sum()


RANDOM_SEEDS = list(range(12))


def dit_broja(p: np.ndarray) -> dict:
    cells = np.argwhere(p > 0)
    dist = dit.Distribution([tuple(int(v) for v in cell) for cell in cells], p[p > 0])
    pid = PID_BROJA(dist, [[0], [1]], [2], method=DIT_METHOD)
    return {"R": pid.get_pi(((0,), (1,))), "U1": pid.get_pi(((0,),)),
            "U2": pid.get_pi(((1,),)), "S": pid.get_pi(((0, 1),))}


def reference_mutual_information(p_xy: np.ndarray) -> float:
    """I(X;Y) in bits as sum p log p / (p(x) p(y)), written out independently of the library."""
    outer = p_xy.sum(1, keepdims=True) * p_xy.sum(0, keepdims=True)
    mask = p_xy > 0
    return float(np.sum(p_xy[mask] * np.log2(p_xy[mask] / outer[mask])))


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_distributions_match_dit(name):
    ours, theirs = broja(CLASSIC[name]), dit_broja(CLASSIC[name])
    for part in ours:
        assert ours[part] == pytest.approx(theirs[part], abs=DIT_TOL), part


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_distributions_match_closed_forms(name):
    ours = broja(CLASSIC[name])
    for part, value in CLOSED_FORMS[name].items():
        assert ours[part] == pytest.approx(value, abs=1e-6), part


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_distributions_match_dit(seed):
    p = random_joint(seed)
    ours, theirs = broja(p), dit_broja(p)
    for part in ours:
        assert ours[part] == pytest.approx(theirs[part], abs=DIT_TOL), (p.shape, part)


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_parts_satisfy_the_marginal_identities(seed):
    p = random_joint(seed)
    n1, n2, ny = p.shape
    parts = broja(p)
    i_x1 = reference_mutual_information(p.sum(1))
    i_x2 = reference_mutual_information(p.sum(0))
    i_joint = reference_mutual_information(p.reshape(n1 * n2, ny))
    assert sum(parts.values()) == pytest.approx(i_joint, abs=IDENTITY_TOL)
    assert parts["R"] + parts["U1"] == pytest.approx(i_x1, abs=IDENTITY_TOL)
    assert parts["R"] + parts["U2"] == pytest.approx(i_x2, abs=IDENTITY_TOL)
    assert min(parts.values()) > -IDENTITY_TOL


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_swapping_the_sources_swaps_the_unique_parts(seed):
    p = random_joint(seed)
    parts, swapped = broja(p), broja(p.transpose(1, 0, 2))
    assert swapped["U1"] == pytest.approx(parts["U2"], abs=1e-6)
    assert swapped["U2"] == pytest.approx(parts["U1"], abs=1e-6)
    assert swapped["R"] == pytest.approx(parts["R"], abs=1e-6)
    assert swapped["S"] == pytest.approx(parts["S"], abs=1e-6)


def test_unused_symbols_leave_the_decomposition_unchanged():
    padded = np.zeros((3, 4, 3))
    padded[:2, 1:3, :2] = CLASSIC["XOR"]
    parts = broja(padded)
    for part, value in CLOSED_FORMS["XOR"].items():
        assert parts[part] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("seed", [1, 4, 7])
def test_returned_coupling_is_feasible_and_certifies_the_parts(seed):
    p = random_joint(seed)
    parts, info = broja(p, return_info=True)
    q = info["q"]
    assert info["gap"] <= 1e-6
    assert np.min(q) >= 0
    np.testing.assert_allclose(q.sum(1), p.sum(1), atol=1e-12)
    np.testing.assert_allclose(q.sum(0), p.sum(0), atol=1e-12)
    u1 = conditional_mutual_information(q.transpose(0, 2, 1))       # I_Q(X1;Y|X2)
    u2 = conditional_mutual_information(q.transpose(1, 2, 0))       # I_Q(X2;Y|X1)
    assert u1 == pytest.approx(parts["U1"], abs=1e-9)
    assert u2 == pytest.approx(parts["U2"], abs=1e-9)


def test_large_alphabet_has_a_small_certified_gap():
    p = np.random.default_rng(0).dirichlet(np.full(30 * 30 * 10, 0.3)).reshape(30, 30, 10)
    parts, info = broja(p, return_info=True)
    assert info["gap"] <= 1e-6
    assert min(parts.values()) > -1e-6


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 2), 0.25), "3 axes"),
    (np.full((2, 2, 2), 0.2), "sum to 1"),
    (np.array([[[0.5, 0.5], [0.25, -0.25]], [[0, 0], [0, 0]]]), "negative"),
    (np.array([[[np.nan, 0.5], [0.25, 0.25]], [[0, 0], [0, 0]]]), "non-finite"),
])
def test_invalid_joints_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        broja(bad)


def test_shannon_helpers_match_references():
    rng = np.random.default_rng(3)
    p_xyz = rng.dirichlet(np.ones(24)).reshape(2, 3, 4)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert entropy(p_xyz) == pytest.approx(scipy_stats.entropy(p_xyz.ravel(), base=2), abs=1e-12)
    assert mutual_information(p_xyz.sum(2)) == pytest.approx(
        reference_mutual_information(p_xyz.sum(2)), abs=1e-12)
    cells = np.argwhere(p_xyz > 0)
    dist = dit.Distribution([tuple(int(v) for v in cell) for cell in cells], p_xyz[p_xyz > 0])
    assert conditional_mutual_information(p_xyz) == pytest.approx(
        dit.multivariate.coinformation(dist, [[0], [1]], [2]), abs=1e-9)
    assert mutual_information(np.eye(4) / 4) == pytest.approx(2.0, abs=1e-12)
    assert conditional_mutual_information(CLASSIC["XOR"].transpose(0, 2, 1)) == pytest.approx(1.0)
