"""Patient-level features from long EHR tables: one row per patient from lab, encounter and diagnosis rows.

Per lab code ``c`` (in the order given): ``c__count`` (rows of that code, missing values included),
``c__mean``, ``c__min``, ``c__max`` (over recorded values), ``c__last`` (the recorded value with the latest
``charttime``; should one patient have two results of a code at the same instant, either may be taken) and ``c__missing_rate`` (share of the code's rows whose value is
null; null when the patient has no row of that code). Plus ``n_encounters`` and ``n_diagnoses``. Every
patient of the patients table gets a row (counts 0 when they have none), sorted by ``patient_id``.

Two engines compute the same numbers, both without loading the long table whole:

* :func:`patient_features_polars`: a lazy query on the Parquet files, run by Polars' streaming engine;
  the long rows are reduced per (patient, code) as they stream in (streaming-native aggregations only:
  ``max_by`` for the last value, not a per-group sort, which would buffer every group's values), then
  pivoted by one left join per code on that small table (one row per patient and code, ~1/50 of the rows).
* :func:`patient_features_duckdb`: one SQL aggregation; with ``memory_limit`` and ``temp_directory`` DuckDB
  spills its hash tables to disk, so it finishes on inputs larger than the memory it is given.

Inputs are Parquet paths or globs (``labs``: patient_id, lab_code, charttime, value; ``encounters`` and
``diagnoses``: patient_id; ``patients``: patient_id). No real data is involved in this module's tests.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

LAB_STATS = ("count", "mean", "min", "max", "last", "missing_rate")
PATIENT = "patient_id"


def feature_names(codes: list[str]) -> list[str]:
    return [PATIENT, "n_encounters", "n_diagnoses"] + [f"{c}__{s}" for c in codes for s in LAB_STATS]


def lab_codes(labs: str | Path) -> list[str]:
    """The distinct lab codes of the lab files, sorted (a one-column scan)."""
    return sorted(
        pl.scan_parquet(labs).select(pl.col("lab_code").unique()).collect(engine="streaming")["lab_code"].drop_nulls()
    )


def _counts(path: str | Path, name: str) -> pl.LazyFrame:
    return pl.scan_parquet(path).group_by(PATIENT).agg(pl.len().cast(pl.Int64).alias(name))


def patient_features_polars(
    labs: str | Path,
    encounters: str | Path,
    diagnoses: str | Path,
    patients: str | Path,
    codes: list[str] | None = None,
    out: Path | None = None,
) -> pl.DataFrame | None:
    """Polars (lazy, streaming engine). Returns the frame, or writes it to ``out`` (Parquet) and returns None."""
    codes = lab_codes(labs) if codes is None else list(codes)
    value = pl.col("value")
    recorded_time = pl.when(value.is_not_null()).then(pl.col("charttime"))
    per_code = (
        pl.scan_parquet(labs)
        .select(PATIENT, "lab_code", "charttime", "value")
        .filter(pl.col("lab_code").is_in(codes))
        .with_columns(pl.col("lab_code").cast(pl.Enum(codes)))  # an integer key: smaller, faster hash tables
        .group_by(PATIENT, "lab_code")
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            value.mean().alias("mean"),
            value.min().alias("min"),
            value.max().alias("max"),
            value.max_by(recorded_time).alias("last"),
            (value.null_count() / pl.len()).alias("missing_rate"),
        )
        .collect(engine="streaming")
    )
    frame = (
        pl.scan_parquet(patients)
        .select(PATIENT)
        .unique()
        .join(_counts(encounters, "n_encounters"), on=PATIENT, how="left")
        .join(_counts(diagnoses, "n_diagnoses"), on=PATIENT, how="left")
    )
    per_code = per_code.lazy()
    for c in codes:  # pivot: one left join per code (cheaper in time and memory than a pivot or filtered aggs)
        part = per_code.filter(pl.col("lab_code") == c).select(
            PATIENT, *(pl.col(s).alias(f"{c}__{s}") for s in LAB_STATS)
        )
        frame = frame.join(part, on=PATIENT, how="left")
    frame = (
        frame.with_columns(pl.col("n_encounters", "n_diagnoses", *(f"{c}__count" for c in codes)).fill_null(0))
        .select(feature_names(codes))
        .sort(PATIENT)
    )
    if out is None:
        return frame.collect(engine="streaming")
    frame.sink_parquet(out, engine="streaming")
    return None


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def feature_sql(labs: str, encounters: str, diagnoses: str, patients: str, codes: list[str]) -> str:
    """Reduce lab rows per (patient, code) in one grouped pass, then pivot that small table per patient."""
    pivot = []
    for c in codes:
        is_c = f"lab_code = {_sql_literal(c)}"
        pivot += [f"coalesce(any_value(n) FILTER (WHERE {is_c}), 0) AS {_ident(c + '__count')}"]
        pivot += [f"any_value({s}) FILTER (WHERE {is_c}) AS {_ident(f'{c}__{s}')}" for s in LAB_STATS if s != "count"]
    in_codes = ", ".join(_sql_literal(c) for c in codes)
    order = ", ".join(_ident(n) for n in feature_names(codes))
    return f"""
        WITH per_code AS (
            SELECT patient_id, lab_code, count(*) AS n, avg(value) AS mean, min(value) AS min, max(value) AS max,
                   arg_max(value, charttime) FILTER (WHERE value IS NOT NULL) AS last,
                   1 - count(value) / count(*) AS missing_rate
            FROM read_parquet({_sql_literal(labs)}) WHERE lab_code IN ({in_codes}) GROUP BY patient_id, lab_code
        ),
        l AS (SELECT patient_id, {", ".join(pivot)} FROM per_code GROUP BY patient_id),
        e AS (SELECT patient_id, count(*) AS n_encounters FROM read_parquet({_sql_literal(encounters)}) GROUP BY patient_id),
        d AS (SELECT patient_id, count(*) AS n_diagnoses FROM read_parquet({_sql_literal(diagnoses)}) GROUP BY patient_id),
        p AS (SELECT DISTINCT patient_id FROM read_parquet({_sql_literal(patients)}))
        SELECT {order} FROM (
            SELECT p.patient_id, coalesce(e.n_encounters, 0) AS n_encounters, coalesce(d.n_diagnoses, 0) AS n_diagnoses,
                   {", ".join(f"coalesce(l.{_ident(c + '__count')}, 0) AS {_ident(c + '__count')}" for c in codes)},
                   {", ".join(f"l.{_ident(f'{c}__{s}')}" for c in codes for s in LAB_STATS if s != "count")}
            FROM p LEFT JOIN e USING (patient_id) LEFT JOIN d USING (patient_id) LEFT JOIN l USING (patient_id)
        ) ORDER BY patient_id
    """


def patient_features_duckdb(
    labs: str | Path,
    encounters: str | Path,
    diagnoses: str | Path,
    patients: str | Path,
    codes: list[str] | None = None,
    out: Path | None = None,
    memory_limit: str | None = None,
    temp_directory: str | Path | None = None,
    threads: int | None = None,
) -> pl.DataFrame | None:
    """DuckDB. With ``memory_limit`` (e.g. ``"2GB"``) and ``temp_directory`` it spills to disk rather than fail.
    Returns the frame, or writes it to ``out`` (Parquet) and returns None."""
    codes = lab_codes(labs) if codes is None else list(codes)
    config = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if temp_directory:
        config["temp_directory"] = str(temp_directory)
    if threads:
        config["threads"] = threads
    config["preserve_insertion_order"] = False  # no need to keep scan order; the result is ORDER BY patient_id
    sql = feature_sql(str(labs), str(encounters), str(diagnoses), str(patients), codes)
    with duckdb.connect(config=config) as con:
        con.execute("SET enable_progress_bar = false")
        if out is None:
            frame = con.execute(sql).pl()
            return frame.with_columns(
                pl.col(f"{c}__count" for c in codes).cast(pl.Int64),
                pl.col("n_encounters", "n_diagnoses").cast(pl.Int64),
            )
        con.execute(f"COPY ({sql}) TO {_sql_literal(str(out))} (FORMAT parquet)")
    return None
