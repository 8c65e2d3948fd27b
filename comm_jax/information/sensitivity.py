"""Sensitivity of the clustering PID estimator to its cluster count and PCA size, on synthetic
blob data of known PID; `python -m comm_jax.information.sensitivity` prints the table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from comm_jax.information.discrete_estimator import pid_from_features
from comm_jax.information.pid import PID_PARTS, broja
from comm_jax.information.synthetic import RULES, blob_pid_case


def sweep(rules: Sequence[str] = RULES, clusters: Sequence[int] = (5, 10, 20, 40),
          pca_dims: Sequence[int | None] = (2, 4, 8), n: int = 2000, seed: int = 0) -> list[dict]:
    """One row per (rule, clusters, pca_dim): the estimate, the truth (BROJA of the generating
    latents' empirical joint) and the largest absolute error over the four parts, in bits."""
    rows = []
    for rule in rules:
        case = blob_pid_case(rule, n=n, seed=seed)
        truth = broja(case.latent_joint)
        for k in clusters:
            for dim in pca_dims:
                estimate = pid_from_features(case.features1, case.features2, case.labels,
                                             clusters=k, pca_dim=dim, seed=seed).parts
                rows.append({"rule": rule, "clusters": k, "pca_dim": dim, "estimate": estimate,
                             "truth": truth,
                             "max_error": max(abs(estimate[p] - truth[p]) for p in PID_PARTS)})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of `sweep` rows."""
    lines = ["| rule | clusters | PCA | R | U1 | U2 | S | truth R/U1/U2/S | max error |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows:
        est, truth = row["estimate"], row["truth"]
        lines.append(
            f"| {row['rule']} | {row['clusters']} | {row['pca_dim'] or 'all'} | "
            + " | ".join(f"{est[p]:.3f}" for p in PID_PARTS)
            + " | " + "/".join(f"{truth[p]:.2f}" for p in PID_PARTS) + f" | {row['max_error']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="rows of synthetic data per rule")
    parser.add_argument("--clusters", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--pca-dims", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(format_table(sweep(clusters=args.clusters, pca_dims=args.pca_dims, n=args.n, seed=args.seed)))


if __name__ == "__main__":
    main()
