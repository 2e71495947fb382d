"""What the evaluation report says of a text model beyond the shared evaluator: the terms it weighs most per class,
and the training rows with no text (the missing-data table)."""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from meddiag_pipelines.text.models import top_terms_per_class

TOP_TERMS = 10


def top_terms_html(model_dir: Path, k: int = TOP_TERMS) -> str:
    """An HTML table: per class, the terms the model weighs most toward it (no external resources)."""
    terms = top_terms_per_class(Path(model_dir), k)
    rows = "".join(
        f"<tr><td>{html.escape(str(c))}</td><td>{html.escape(', '.join(t for t, _ in pairs)) or '&mdash;'}</td></tr>"
        for c, pairs in terms.items()
    )
    return (
        f"<p>The {k} terms most indicative of each class (relative to the mean over classes), as the "
        "chosen model weighs them. Terms come from scrubbed training text.</p>"
        f"<table><tr><th>class</th><th>top terms</th></tr>{rows}</table>"
    )


def missing_texts(train_rows: pl.DataFrame, column: str) -> list[dict]:
    """The missing-data row of the text column: training texts empty or blank (validation blocks them)."""
    n = max(train_rows.height, 1)
    missing = train_rows.filter(pl.col(column).cast(pl.String).str.strip_chars().fill_null("") == "").height
    return [
        {
            "feature": column,
            "n_missing": missing,
            "rate": missing / n,
            "handling": "none needed" if not missing else "empty text (blocked by validation)",
        }
    ]
