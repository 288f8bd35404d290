"""Reverse perturbation on the Norman et al. 2019 subset: do held-out doubles rank first?

Trains SCGPTPerturbation on control, the 18 singles and the doubles that are not held out
(the five doubles whose two singles were both measured, as ``bench_perturbation.py``), then
ranks, for each held-out double, every pair of the 18 singles (153 candidates) with
``rank_perturbations``. The ``additive`` baseline ranks the same candidates by the same metric
from the additive expectation (control mean plus the two singles' observed mean deltas in the
training data). Prints JSON: top-1 / top-3 hit rates, the true pair's rank per double, and
chance levels (1/153, 3/153); with several ``--seed`` values, one model per seed and the
mean and standard deviation over seeds.

    SCGPT_SCVI_SHARED=../shared python benchmarks/bench_reverse_perturbation.py --seed 0 1 2 \
        --out docs/benchmarks/reverse_perturbation.json   # also write the docs figure's JSON

10 epochs, d_model 64, 50 control cells per candidate: about 5 minutes per seed on one CPU
thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_perturbation import HELD_OUT, norman_split  # noqa: E402 (the same split)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--nlayers", type=int, default=2)
    p.add_argument(
        "--n-control-cells", type=int, default=50, help="controls each candidate perturbs"
    )
    p.add_argument("--metric", default="pearson_delta", choices=("pearson_delta", "pearson", "mse"))
    p.add_argument(
        "--combination",
        default=None,
        choices=("direct", "additive_interaction"),
        help="SCGPTPerturbation's combination (default: the model's default)",
    )
    p.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="one model per seed (e.g. 0 1 2)"
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--out", type=Path, default=None, help="write the docs-figure JSON here too")
    return p.parse_args(argv)


def _score(metric: str, pred: np.ndarray, target: np.ndarray, control: np.ndarray) -> float:
    """The scores of ``SCGPTPerturbation.rank_perturbations`` (higher is better)."""
    from scgpt_scvi.metrics import pearson_delta

    if metric == "pearson_delta":
        return pearson_delta(pred, target, control)
    if metric == "pearson":
        return float(np.corrcoef(pred, target)[0, 1])
    return -float(((pred - target) ** 2).mean())


def _rank_of(ranked_names, scores, double: str) -> int:
    """1-based rank of the pair naming the same genes as ``double`` (ties: stable order)."""
    order = np.argsort(-np.nan_to_num(np.asarray(scores, float), nan=-np.inf), kind="stable")
    truth = set(double.split("+"))
    return 1 + next(i for i, j in enumerate(order) if set(ranked_names[j].split("+")) == truth)


def _summary(ranks: dict[str, int], n: int) -> dict:
    r = np.array(list(ranks.values()))
    return {
        "top1": round(float((r <= 1).mean()), 3),
        "top3": round(float((r <= 3).mean()), 3),
        "median_rank": float(np.median(r)),
        "ranks": ranks,
    }


def run(args: argparse.Namespace, seed: int) -> dict:
    import scvi
    import torch

    from scgpt_scvi import SCGPTPerturbation
    from scgpt_scvi.metrics import condition_mean, perturbation_baselines

    torch.set_num_threads(args.threads)
    scvi.settings.seed = seed
    adata, train, kw = norman_split()
    for data in (adata, train):
        data.obs["condition"] = data.obs["condition"].astype(str)
    SCGPTPerturbation.setup_anndata(train, **kw)
    combination = {} if args.combination is None else {"combination": args.combination}
    model = SCGPTPerturbation(
        train,
        d_model=args.d_model,
        nhead=4,
        d_hid=args.d_model,
        nlayers=args.nlayers,
        seed=seed,
        **combination,
    )
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        plan_kwargs={"lr": args.lr},
        enable_progress_bar=False,
    )
    train_s = time.perf_counter() - t0

    singles = sorted(c for c in train.obs["condition"].unique() if "+" not in c and c != "control")
    pairs = [f"{a}+{b}" for a, b in itertools.combinations(singles, 2)]
    additive = perturbation_baselines(train, perturbations=pairs, **kw)["additive"].X
    control = condition_mean(train, "condition", "control")
    ranks: dict[str, dict[str, int]] = {"SCGPTPerturbation": {}, "additive": {}}
    t0 = time.perf_counter()
    for double in HELD_OUT:
        observed = adata[adata.obs["condition"] == double]
        ranked = model.rank_perturbations(
            observed,
            candidates=pairs,
            n_control_cells=args.n_control_cells,
            metric=args.metric,
            seed=seed,
        )
        names = list(ranked["perturbation"])
        ranks["SCGPTPerturbation"][double] = _rank_of(names, ranked["score"], double)
        target = condition_mean(adata, "condition", double)
        scores = [_score(args.metric, p, target, control) for p in additive]
        ranks["additive"][double] = _rank_of(pairs, scores, double)
        print(seed, double, {m: r[double] for m, r in ranks.items()}, file=sys.stderr, flush=True)
    rank_s = time.perf_counter() - t0
    n = len(pairs)
    return {
        "seed": seed,
        "combination": model.module.combination,
        "metric": args.metric,
        "held_out": list(HELD_OUT),
        "n_candidates": n,
        "methods": {m: _summary(r, n) for m, r in ranks.items()},
        "chance_top1": round(1 / n, 4),
        "chance_top3": round(3 / n, 4),
        "chance_median_rank": (n + 1) / 2,
        "train_s": round(train_s, 1),
        "rank_s": round(rank_s, 1),
    }


def aggregate(args: argparse.Namespace, reports: list[dict]) -> dict:
    """Per-seed reports and, per method, the mean and sd over seeds of top-1 / top-3."""
    first = reports[0]
    methods = {}
    for name in first["methods"]:
        row = {}
        for key in ("top1", "top3", "median_rank"):
            vals = np.array([r["methods"][name][key] for r in reports], float)
            row[key] = round(float(vals.mean()), 3)
            row[f"{key}_sd"] = round(float(vals.std(ddof=1)), 3) if len(vals) > 1 else None
        methods[name] = row
    return {
        "command_args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "metric": first["metric"],
        "combination": first["combination"],
        "held_out": first["held_out"],
        "n_candidates": first["n_candidates"],
        "chance_top1": first["chance_top1"],
        "chance_top3": first["chance_top3"],
        "chance_median_rank": first["chance_median_rank"],
        "mean_over_seeds": methods,
        "per_seed": [{k: v for k, v in r.items() if k != "held_out"} for r in reports],
    }


def docs_spec(summary: dict, command: str) -> dict:
    """``summary`` in the shape of ``docs/benchmarks/*.json`` (drawn by plot_benchmarks.py)."""
    n_seeds = len(summary["per_seed"])
    results = {}
    for name, m in summary["mean_over_seeds"].items():
        label = f"{name} ({n_seeds} seeds)" if name != "additive" and n_seeds > 1 else name
        results[label] = {
            k: m[k] for k in ("top1", "top1_sd", "top3", "top3_sd") if m.get(k) is not None
        }
        if name == "additive":  # deterministic: no seed spread
            results[label] = {"top1": m["top1"], "top3": m["top3"]}
    results["chance"] = {"top1": summary["chance_top1"], "top3": summary["chance_top3"]}
    return {
        "title": (
            f"Reverse perturbation: {len(summary['held_out'])} held-out Norman doubles among "
            f"{summary['n_candidates']} pairs of singles ({summary['metric']})"
        ),
        "command": command,
        "source": "benchmarks/bench_reverse_perturbation.py (issue 13)",
        "metric_names": ["top1", "top3"],
        "results": results,
        "details": summary,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    summary = aggregate(args, [run(args, seed) for seed in args.seed])
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        command = "python benchmarks/bench_reverse_perturbation.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        args.out.write_text(json.dumps(docs_spec(summary, command.strip()), indent=2) + "\n")


if __name__ == "__main__":
    main()
