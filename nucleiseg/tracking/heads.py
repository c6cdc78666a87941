"""The field's ways of separating nuclei, side by side: a study whose runs differ by ``model.head`` (experiment=heads)
compared on each head's own separation method (the paper's binary head with its watershed, Naylor's distance map,
HoVer-Net's HV maps, StarDist's polygons), over seeds.

- :func:`head_table`: per head, median, IQR and n over seeds of AJI, AJI+, PQ and object F1 on the held-out split,
  and the nuclei found against the annotated ones;
- :func:`head_ranking`: the heads ranked by median AJI, each one's gap to the next against the seed spread, and how
  stable the ranking is across seeds: the mean Kendall's tau between the rankings of every pair of seeds (1: every
  seed ranks the heads alike; about 0: the ranking is noise).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from nucleiseg.postprocess.instances import AUTO

OWN_METRICS = ("aji", "aji_plus", "pq", "object_f1")


def own_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: its head, seed and the metrics of its head's own separation method."""
    rows = []
    for _, run in runs[runs.finished].iterrows():
        method = AUTO.get(str(run["head"]), "watershed")
        row = {"head": run["head"], "method": method, "seed": run["seed"]}
        for name in (*OWN_METRICS, "n_predicted_nuclei", "n_true_nuclei"):
            row[name] = run.get(f"{name}_{method}", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def head_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Median, IQR and n over seeds per head (each on its own method), with nuclei found and annotated."""
    own = own_metrics(runs)
    if own.empty or own["head"].nunique() < 2:
        return pd.DataFrame()
    rows = []
    for head, group in own.groupby("head"):
        row = {"head": head, "method": group.method.iloc[0], "n": len(group)}
        for name in OWN_METRICS:
            values = group[name].dropna()
            row[name] = values.median()
            # one seed has no spread: "-" in the table, not an IQR of 0
            row[f"{name}_iqr"] = values.quantile(0.75) - values.quantile(0.25) if len(values) > 1 else np.nan
        row["nuclei_found"] = group.n_predicted_nuclei.median()
        row["nuclei_true"] = group.n_true_nuclei.median()
        row["count_error"] = row["nuclei_found"] / row["nuclei_true"] - 1 if row["nuclei_true"] else np.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values("aji", ascending=False).reset_index(drop=True)


def head_ranking(runs: pd.DataFrame, metric: str = "aji") -> tuple[pd.DataFrame, dict[str, float]]:
    """The heads ranked by median ``metric``: the gap of each to the next below it against the larger of their two
    IQRs (``beyond_spread``: ``yes`` when the gap exceeds it, ``no``, or ``unknown (1 seed)`` when either head has
    a single seed); and the ranking's stability over seeds (mean pairwise Kendall's
    tau of the per-seed rankings, over the seeds every head finished)."""
    from scipy.stats import kendalltau

    table = head_table(runs)
    if table.empty:
        return pd.DataFrame(), {}
    order = table.sort_values(metric, ascending=False).reset_index(drop=True)
    gaps = []
    for upper, lower in itertools.pairwise(order.itertuples()):
        gap = getattr(upper, metric) - getattr(lower, metric)
        spread = max(getattr(upper, f"{metric}_iqr"), getattr(lower, f"{metric}_iqr"))
        if min(upper.n, lower.n) < 2:  # one seed has no spread: the gap cannot be judged against it
            spread, beyond = np.nan, "unknown (1 seed)"
        else:
            beyond = "yes" if gap > spread else "no"
        gaps.append({"above": upper.head, "below": lower.head, "gap": gap, "seed_spread": spread,
                     "beyond_spread": beyond})  # fmt: skip
    own = own_metrics(runs)
    wide = own.pivot_table(index="seed", columns="head", values=metric).dropna()
    taus = [kendalltau(wide.loc[a], wide.loc[b]).statistic for a, b in itertools.combinations(wide.index, 2)]
    taus = [t for t in taus if np.isfinite(t)]
    stability = {"seeds": float(len(wide)), "mean_kendall_tau": float(np.mean(taus)) if taus else float("nan")}
    ranked = order[["head", "method", "n", metric, f"{metric}_iqr"]].assign(rank=range(1, len(order) + 1))
    return ranked.merge(pd.DataFrame(gaps).rename(columns={"above": "head"}), on="head", how="left"), stability
