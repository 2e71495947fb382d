"""The champion/challenger decision, a pure function of evaluation results on the same test rows.

A candidate becomes champion only if
* there is no champion yet and its AUROC clears ``promotion.auroc_floor``; or
* it is non-inferior to the champion: the lower bound of the paired-bootstrap 95% CI of
  (candidate AUROC - champion AUROC) lies above ``-promotion.margin``;
and, in both cases, its calibration slope is compatible with ``promotion.slope_band`` (binary tasks: the slope's
bootstrap 95% CI overlaps the band, so only a demonstrably mis-calibrated model fails; the rule is skipped when the
evaluation has no ``calibration_slope``, as for multi-class and multi-label tasks) and no subgroup's
AUROC falls by more than ``promotion.max_subgroup_drop`` below the champion's. A pinned champion (a rollback)
is never replaced automatically.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from meddiag_pipelines.specs import PromotionSpec


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def subgroup_rows(metrics: dict) -> dict[tuple[str, str], dict]:
    """The subgroup rows judged (status ok, with an AUROC), by (column, value)."""
    out = {}
    for column, rows in (metrics.get("subgroups") or {}).items():
        for row in rows:
            if row.get("status") == "ok" and row.get("auroc") is not None:
                out[(column, str(row["value"]))] = row
    return out


def subgroup_aurocs(metrics: dict) -> dict[tuple[str, str], float]:
    return {key: row["auroc"] for key, row in subgroup_rows(metrics).items()}


def _gate_checks(candidate: dict, champion: dict | None, settings: PromotionSpec) -> list[tuple[bool, str]]:
    """(passed, reason) of every rule, the AUROC rule (floor or non-inferiority) first."""
    auroc = candidate.get("auroc")
    if auroc is None:
        return [(False, "candidate AUROC could not be computed on the test set")]
    if champion is None:
        ok = auroc >= settings.auroc_floor
        floor = f"first model: AUROC {auroc:.3f} {'clears' if ok else 'is below'} the floor {settings.auroc_floor}"
        return [(ok, floor), *slope_check(candidate, settings)]
    comparison = candidate.get("comparison") or {}
    ci = comparison.get("auroc_difference_ci")
    diff = comparison.get("auroc_difference")
    if ci is None or diff is None:
        checks = [(False, "the paired AUROC difference against the champion could not be computed")]
    else:
        ok = ci[0] > -settings.margin
        checks = [
            (
                ok,
                f"AUROC difference vs champion {diff:+.3f} (95% CI {ci[0]:+.3f} to {ci[1]:+.3f}) "
                f"{'is' if ok else 'is not'} non-inferior at margin {settings.margin}",
            )
        ]
    checks += slope_check(candidate, settings)
    before = subgroup_aurocs(champion)
    for key, value in subgroup_aurocs(candidate).items():
        if key in before and before[key] - value > settings.max_subgroup_drop:
            checks.append(
                (
                    False,
                    f"subgroup {key[0]}={key[1]}: AUROC falls {before[key]:.3f} -> {value:.3f}, "
                    f"more than {settings.max_subgroup_drop}",
                )
            )
    return checks


def slope_check(candidate: dict, settings: PromotionSpec) -> list[tuple[bool, str]]:
    slope, slope_ci = candidate.get("calibration_slope"), candidate.get("calibration_slope_ci")
    if slope is None:
        return []
    low, high = settings.slope_band
    # Judged by the slope's CI: a slope fails when the data show it outside the band, not when a small,
    # nearly separable test set merely cannot pin it down.
    # A bound of None is unbounded: resamples whose risks separate their outcomes have no finite slope.
    span = (
        [-math.inf if slope_ci[0] is None else slope_ci[0], math.inf if slope_ci[1] is None else slope_ci[1]]
        if slope_ci
        else [slope, slope]
    )
    ok = span[0] <= high and span[1] >= low
    return [
        (
            ok,
            f"calibration slope {slope:.3f} (95% CI {span[0]:.3f} to {span[1]:.3f}) "
            f"{'is compatible with' if ok else 'lies outside'} the band [{low}, {high}]",
        )
    ]


def decide(candidate: dict, champion: dict | None, settings: PromotionSpec, pinned: bool = False) -> Decision:
    """``candidate``: evaluation of the candidate with the champion as its comparator (so ``comparison`` is
    candidate minus champion); ``champion``: evaluation of the champion on the same test rows, or ``None``."""
    checks = _gate_checks(candidate, champion, settings)
    # What decided first: a failed rule when one failed, else the AUROC rule (``update`` shows the first reason).
    reasons = [text for ok, text in checks if not ok] + [text for ok, text in checks if ok]
    promote = all(ok for ok, _ in checks)
    if pinned and promote:
        promote = False
        reasons.insert(0, "the champion is pinned (rollback); unpin it to allow promotion")
    figures = {
        "candidate_auroc": candidate.get("auroc"),
        "champion_auroc": champion.get("auroc") if champion else None,
        "calibration_slope": candidate.get("calibration_slope"),
    }
    return Decision(promote, reasons, figures)
