"""Where the spread of a configuration's results comes from: the TNBC test split, or the training seed.

With runs of one configuration over several splits (``data.protocol.seed``, ``data.protocol.split``) and
several training seeds each (``experiment=split_sensitivity``), the spread decomposes like a one-way analysis of
variance: between splits (the standard deviation of the split means) and within a split (the pooled standard
deviation over training seeds). The paper fixes one split it does not publish, so a reproduction can land
anywhere within the between-split spread without being wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nucleiseg.tracking.study import order_rows


def split_table(runs: pd.DataFrame, metric: str = "jaccard") -> pd.DataFrame:
    """Per configuration and split: finished seeds, median, min and max of ``metric``."""
    finished = runs[runs.finished & runs[metric].notna()] if metric in runs else runs.iloc[0:0]
    grouped = finished.groupby(["configuration", "data_split"])[metric]
    table = pd.DataFrame({"n": grouped.size(), "median": grouped.median(), "min": grouped.min(), "max": grouped.max()})
    return table.reset_index()


def decompose(runs: pd.DataFrame, metric: str = "jaccard") -> pd.DataFrame:
    """For each configuration run on more than one split: total, between-split and within-split (seed) SD."""
    finished = runs[runs.finished & runs[metric].notna()] if metric in runs else runs.iloc[0:0]
    rows = []
    for configuration, group in finished.groupby("configuration"):
        by_split = group.groupby("data_split")[metric]
        if by_split.ngroups < 2:
            continue
        within = by_split.var(ddof=1).dropna()
        rows.append(
            {
                "configuration": configuration,
                "metric": metric,
                "n_splits": by_split.ngroups,
                "n_runs": len(group),
                "total_sd": float(group[metric].std(ddof=1)),
                "between_splits_sd": float(by_split.mean().std(ddof=1)),
                "within_split_seed_sd": float(np.sqrt(within.mean())) if len(within) else np.nan,
                "split_medians_min": float(by_split.median().min()),
                "split_medians_max": float(by_split.median().max()),
            }
        )
    return order_rows(pd.DataFrame(rows)) if rows else pd.DataFrame(rows)
