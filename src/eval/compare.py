"""Does one configuration caption better than another, beyond what the val images and the
training seed move by themselves?

Each run is its per-image scores table (the evaluate stage's per-image CSV: `image_id`,
`cider`, and where CHAIR was scored `chair_mentions` and `chair_hallucinated`). A
configuration trained with several training seeds is pooled per image first (CIDEr averaged
over seeds, CHAIR counts summed), then compared with the reference on the same images by a
paired bootstrap (src/eval/intervals.py): the interval covers image sampling; the spread
across seeds is reported beside it as mean ± sd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.eval.intervals import (
    BOOTSTRAP_SEED,
    LEVEL,
    NUM_RESAMPLES,
    Difference,
    mean_ci,
    paired_difference,
    paired_ratio_difference,
    ratio_of_totals,
)

CHAIR_COLUMNS = ("chair_mentions", "chair_hallucinated")


@dataclass(frozen=True)
class Spread:
    """A metric over training seeds: the mean and the sample sd (None for one seed)."""

    mean: float
    sd: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
        return cls(float(np.mean(values)), sd)


@dataclass(frozen=True)
class Summary:
    """One configuration: its metrics over seeds and its paired difference with a reference
    (None for the reference itself). CHAIR fields are None where CHAIR was not scored."""

    seeds: int
    cider: Spread
    cider_ci: tuple[float, float]  # over images, of the seed-pooled per-image CIDEr
    chair_i: Spread | None
    chair_s: Spread | None
    cider_difference: Difference | None
    chair_i_difference: Difference | None
    chair_s_difference: Difference | None


def _has_chair(table: pd.DataFrame) -> bool:
    return all(column in table.columns for column in CHAIR_COLUMNS)


def aligned(tables: Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    """The tables sorted by image id; a ValueError unless all score the same images."""
    if not tables:
        raise ValueError("no per-image table to compare")
    ordered = [table.sort_values("image_id").reset_index(drop=True) for table in tables]
    ids = ordered[0]["image_id"].tolist()
    for table in ordered[1:]:
        if table["image_id"].tolist() != ids:
            raise ValueError("per-image tables score different images: a paired comparison "
                             "needs the same val images (same `seed` and evaluate.num_examples)")
    return ordered


def pooled(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One table for the runs of one configuration (one per training seed): per image, the
    mean CIDEr, the summed CHAIR counts and `chair_s`, the share of runs that hallucinated."""
    runs = aligned(tables)
    out = pd.DataFrame({"image_id": runs[0]["image_id"],
                        "cider": np.mean([run["cider"].to_numpy(float) for run in runs], axis=0)})
    if all(_has_chair(run) for run in runs):
        for column in CHAIR_COLUMNS:
            out[column] = np.sum([run[column].to_numpy(float) for run in runs], axis=0)
        out["chair_s"] = np.mean([run["chair_hallucinated"].to_numpy(float) > 0
                                  for run in runs], axis=0)
    return out


def run_metrics(table: pd.DataFrame) -> dict[str, float]:
    """CIDEr (mean over images), CHAIR_i (hallucinated / mentioned objects) and CHAIR_s
    (share of captions with a hallucinated object) of one run."""
    metrics = {"cider": float(table["cider"].mean())}
    if _has_chair(table):
        metrics["chair_i"] = ratio_of_totals(table["chair_hallucinated"].sum(),
                                             table["chair_mentions"].sum())
        metrics["chair_s"] = float((table["chair_hallucinated"] > 0).mean())
    return metrics


def _spread(runs: Sequence[pd.DataFrame], key: str) -> Spread | None:
    values = [run_metrics(run).get(key) for run in runs]
    return None if any(value is None for value in values) else Spread.of(values)


def difference(runs: Sequence[pd.DataFrame], references: Sequence[pd.DataFrame], *,
               num_resamples: int = NUM_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
               ) -> tuple[Difference, Difference | None, Difference | None]:
    """Paired CIDEr, CHAIR_i and CHAIR_s differences (runs minus references) over the same
    images, each side pooled over its training seeds; CHAIR ones None where not scored."""
    a, b = aligned([pooled(runs), pooled(references)])
    knobs = {"num_resamples": num_resamples, "seed": seed, "level": level}
    cider = paired_difference(a["cider"], b["cider"], **knobs)
    if "chair_s" not in a or "chair_s" not in b:
        return cider, None, None
    chair_i = paired_ratio_difference(a["chair_hallucinated"], a["chair_mentions"],
                                      b["chair_hallucinated"], b["chair_mentions"], **knobs)
    return cider, chair_i, paired_difference(a["chair_s"], b["chair_s"], **knobs)


def summarize(runs: Sequence[pd.DataFrame], references: Sequence[pd.DataFrame] | None, *,
              num_resamples: int = NUM_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
              ) -> Summary:
    """One configuration's runs (one per training seed) against the reference's runs (None:
    this configuration is the reference)."""
    knobs = {"num_resamples": num_resamples, "seed": seed, "level": level}
    differences = ((None, None, None) if references is None
                   else difference(runs, references, **knobs))
    return Summary(len(runs), _spread(runs, "cider"),
                   mean_ci(pooled(runs)["cider"].to_numpy(float), **knobs),
                   _spread(runs, "chair_i"), _spread(runs, "chair_s"), *differences)
