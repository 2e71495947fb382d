"""Dataset shift between development and test features: standardized mean differences."""

from __future__ import annotations

import math

import numpy as np


def standardized_mean_differences(dev: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> list[dict]:
    """SMD = (test mean - dev mean) / sqrt((dev var + test var) / 2) per numeric feature present in both.

    NaNs are ignored; non-numeric columns are skipped. ``flag`` is true when |smd| > 0.1 (or when both sds
    are 0 and the means differ: smd is then None). Rows sorted by |smd|, largest first.
    """
    rows = []
    for name in dev:
        if name not in test:
            continue
        try:
            a = np.asarray(dev[name], dtype=float).ravel()
            b = np.asarray(test[name], dtype=float).ravel()
        except (TypeError, ValueError):
            continue
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size == 0 or b.size == 0:
            continue
        ma, mb = float(a.mean()), float(b.mean())
        sd = math.sqrt(
            (float(a.var(ddof=1)) if a.size > 1 else 0.0) / 2 + (float(b.var(ddof=1)) if b.size > 1 else 0.0) / 2
        )
        if sd > 0:
            smd: float | None = (mb - ma) / sd
            flag = abs(smd) > 0.1
        else:
            smd = 0.0 if ma == mb else None
            flag = ma != mb
        rows.append(
            {
                "feature": str(name),
                "dev_mean": ma,
                "test_mean": mb,
                "smd": smd,
                "flag": bool(flag),
                "n_dev": int(a.size),
                "n_test": int(b.size),
            }
        )
    rows.sort(key=lambda r: (-(math.inf if r["smd"] is None else abs(r["smd"])), r["feature"]))
    return rows
