"""OMOP CDM: cohort, MEDS events and covariates (meddiag_pipelines/omop) against the same three steps in pandas.

``python -m bench omop --persons N --events M`` writes a SYNTHETIC CDM batch (one Parquet file per table,
written in chunks so 50M events never sit in memory) and times, each in its own process:

* ``omop``: :func:`open_cdm`, :func:`build_study` (NSAID new users -> GI bleed, the Book's spec),
  :func:`write_meds` and :func:`build_covariates` on that study population (DuckDB);
* ``pandas``: the same study population (:func:`pandas_cohort`), the same MEDS table (:func:`pandas_meds`) and
  the same covariates (demographics; conditions, drugs rolled up to ingredients, procedures, measurements with
  their last value, visit counts; windows 365, 30 and any time prior, ending the day before index; events
  inside the observation period), read from Parquet with plain pandas.

``--memory-limit 1GB --budget-mb 6000`` runs both under an address-space limit with DuckDB told to spill (the
larger-than-memory run). Every run checks that both give the same population and MEDS row count, and up to 5M
events the same covariates. Shape of the data: events per person log-normal, dates uniform in the person's one
observation period (1% a year before it), concepts Zipf-distributed over 300 per domain, 1 in 50 drug events an
NSAID and 1 in 100 condition events a GI bleed, 10% of drug concepts clinical drugs under an ingredient.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench import bench_dir, emit, measure, parse_rows

NAME = "omop"
IMPLS = ("omop", "pandas")
CHUNK = 5_000_000
SHARES = {
    "condition_occurrence": 0.35,
    "drug_exposure": 0.30,
    "measurement": 0.25,
    "procedure_occurrence": 0.06,
    "visit_occurrence": 0.04,
}
COLUMNS = {  # table -> (concept column, date column, concept base)
    "condition_occurrence": ("condition_concept_id", "condition_start_date", 4_000_000),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date", 19_000_000),
    "measurement": ("measurement_concept_id", "measurement_date", 3_000_000),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date", 4_100_000),
    "visit_occurrence": ("visit_concept_id", "visit_start_date", 9_200),
}
POOL = 300
NSAIDS, GI_BLEED, EPOCH_DAYS = (1118084, 1124300), 192671, 10957  # 2000-01-01 as days since 1970
SPEC = {
    "cohort": {
        "target": {"domain": "drug", "concepts": list(NSAIDS), "descendants": True},
        "prior_observation_days": 364,
        "exclude_prior_outcome": True,
    },
    "outcomes": [{"name": "gi_bleed", "domain": "condition", "concepts": [GI_BLEED], "descendants": True}],
    "time_at_risk": {"start": 1, "end": 365, "min_days": 364},
}


def generate(root: Path, persons: int, events: int, seed: int = 0) -> Path:
    """Write the synthetic CDM under ``root`` (reused when it exists complete)."""
    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq

    if (root / "_COMPLETE").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    start = EPOCH_DAYS + rng.integers(0, 3650, persons)
    length = rng.integers(400, 8000, persons)
    length = np.minimum(length, 19722 - start)  # observation ends by 2023-12-31
    ids = np.arange(1, persons + 1)
    pl.DataFrame(
        {
            "person_id": ids,
            "gender_concept_id": rng.choice([8507, 8532], persons),
            "year_of_birth": rng.integers(1930, 1996, persons),
        }
    ).write_parquet(root / "person.parquet")
    pl.DataFrame(
        {
            "person_id": ids,
            "observation_period_start_date": start.astype("datetime64[D]"),
            "observation_period_end_date": (start + length).astype("datetime64[D]"),
        }
    ).write_parquet(root / "observation_period.parquet")
    weights = rng.lognormal(0, 1, persons)
    weights /= weights.sum()
    for table, share in SHARES.items():
        concept_col, date_col, base = COLUMNS[table]
        total, writer = int(events * share), None
        for offset in range(0, total, CHUNK):
            n = min(CHUNK, total - offset)
            who = rng.choice(persons, n, p=weights)
            day = start[who] + (rng.random(n) * length[who]).astype(np.int64)
            outside = rng.random(n) < 0.01
            day[outside] = start[who[outside]] - rng.integers(1, 365, int(outside.sum()))
            concept = base + (rng.zipf(1.4, n) % POOL)
            if table == "drug_exposure":
                nsaid = rng.random(n) < 0.02
                concept[nsaid] = rng.choice(NSAIDS, int(nsaid.sum()))
            if table == "condition_occurrence":
                concept[rng.random(n) < 0.01] = GI_BLEED
            cols = {"person_id": who + 1, concept_col: concept, date_col: day.astype("datetime64[D]")}
            if table == "measurement":
                cols["value_as_number"] = np.where(rng.random(n) < 0.1, np.nan, rng.normal(100, 15, n).round(1))
            frame = pl.DataFrame(cols)
            if table == "measurement":
                frame = frame.with_columns(pl.col("value_as_number").fill_nan(None))
            arrow = frame.to_arrow()
            writer = writer or pq.ParquetWriter(root / f"{table}.parquet", arrow.schema)
            writer.write_table(arrow)
        if writer:
            writer.close()
    drugs = np.arange(19_000_000, 19_000_000 + POOL)
    ingredients = np.concatenate([list(NSAIDS), drugs[POOL // 10 :]])
    clinical = drugs[: POOL // 10]  # clinical drugs, each under one of the ingredients
    parents = ingredients[np.arange(len(clinical)) % len(ingredients)]
    pl.DataFrame(
        {
            "ancestor_concept_id": np.concatenate([ingredients, parents, [GI_BLEED]]),
            "descendant_concept_id": np.concatenate([ingredients, clinical, [GI_BLEED]]),
        }
    ).write_parquet(root / "concept_ancestor.parquet")
    classes = ["Ingredient"] * len(ingredients) + ["Clinical Drug"] * len(clinical)
    pl.DataFrame(
        {
            "concept_id": np.concatenate([ingredients, clinical]),
            "concept_class_id": classes,
            "concept_name": [f"drug {i}" for i in range(len(classes))],
        }
    ).write_parquet(root / "concept.parquet")
    (root / "_COMPLETE").touch()
    return root


def run_omop(root: str, out: str, memory_limit: str | None = None) -> dict:
    """Child: cohort, MEDS and covariates through meddiag_pipelines.omop; writes the covariates and population."""
    from meddiag_pipelines.omop import (
        StudySpec,
        build_covariates,
        build_study,
        open_cdm,
        write_meds,
    )

    out_p = Path(out)
    times = {}
    t0 = time.perf_counter()
    with open_cdm(Path(root), memory_limit=memory_limit, temp_dir=out_p / "spill") as cdm:
        times["open_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        study = build_study(cdm, StudySpec.model_validate(SPEC))
        population = study.for_outcome("gi_bleed")
        times["cohort_s"] = time.perf_counter() - t
        t = time.perf_counter()
        meds = write_meds(cdm, out_p / "meds.parquet")
        times["meds_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cov = build_covariates(cdm, population)
        times["covariates_s"] = time.perf_counter() - t
    population.select("person_id", "index_date").write_parquet(out_p / "population.parquet")
    cov.data.write_parquet(out_p / "omop_covariates.parquet")
    return {
        "seconds": time.perf_counter() - t0,
        **{k: round(v, 2) for k, v in times.items()},
        "population": population.height,
        "meds_rows": meds["rows"],
        "covariate_rows": cov.data.height,
    }


def pandas_covariates(root: Path, population, windows=(365, 30, None)):
    """The obvious pandas: read each table, join the population, filter, drop duplicates per window."""
    import numpy as np
    import pandas as pd

    pop = population[["person_id", "index_date"]].copy()
    pop["index_date"] = pd.to_datetime(pop["index_date"])
    person = pd.read_parquet(root / "person.parquet").merge(pop, on="person_id")
    age = person["index_date"].dt.year - person["year_of_birth"]
    pid = person["person_id"]
    parts = [
        pd.DataFrame({"person_id": pid, "covariate_id": person["gender_concept_id"] * 1000 + 1, "value": 1.0}),
        pd.DataFrame({"person_id": pid, "covariate_id": 2, "value": age.astype(float)}),
        pd.DataFrame({"person_id": pid, "covariate_id": (age // 5) * 1000 + 3, "value": 1.0}),
    ]
    periods = pd.read_parquet(root / "observation_period.parquet")
    ancestor = pd.read_parquet(root / "concept_ancestor.parquet")
    concept = pd.read_parquet(root / "concept.parquet")
    ingredient_ids = concept.loc[concept["concept_class_id"] == "Ingredient", "concept_id"]
    ingredients = ancestor[ancestor["ancestor_concept_id"].isin(ingredient_ids)]
    codes = {
        "condition_occurrence": 1,
        "drug_exposure": 2,
        "procedure_occurrence": 3,
        "measurement": 4,
        "visit_occurrence": 7,
    }
    for table, k in codes.items():
        concept_col, date_col, _ = COLUMNS[table]
        cols = ["person_id", concept_col, date_col] + (["value_as_number"] if table == "measurement" else [])
        ev = pd.read_parquet(root / f"{table}.parquet", columns=cols).rename(
            columns={concept_col: "concept_id", date_col: "date"}
        )
        ev["date"] = pd.to_datetime(ev["date"])
        ev = ev.merge(pop, on="person_id").merge(periods, on="person_id")
        start, end = (
            pd.to_datetime(periods_col)
            for periods_col in (ev["observation_period_start_date"], ev["observation_period_end_date"])
        )
        ev = ev[(ev["date"] >= start) & (ev["date"] <= end) & (ev["date"] < ev["index_date"]) & (ev["concept_id"] != 0)]
        if table == "drug_exposure":
            ev = ev.merge(ingredients, left_on="concept_id", right_on="descendant_concept_id", how="left")
            ev["concept_id"] = ev["ancestor_concept_id"].fillna(ev["concept_id"]).astype("int64")
        ev["days_before"] = (ev["index_date"] - ev["date"]).dt.days
        for i, w in enumerate(windows):
            sub = ev if w is None else ev[ev["days_before"] <= w]
            if table == "visit_occurrence":
                n = sub.groupby("person_id").size()
                visits = {"person_id": n.index, "covariate_id": 170 + i, "value": n.values.astype(float)}
                parts.append(pd.DataFrame(visits))
                continue
            seen = sub[["person_id", "concept_id"]].drop_duplicates()
            parts.append(
                pd.DataFrame(
                    {
                        "person_id": seen["person_id"],
                        "value": 1.0,
                        "covariate_id": seen["concept_id"] * 1000 + 100 + 10 * k + i,
                    }
                )
            )
            if table == "measurement":
                valued = sub[sub["value_as_number"].notna()].sort_values(["date", "value_as_number"])
                last = valued.groupby(["person_id", "concept_id"])["value_as_number"].last().reset_index()
                parts.append(
                    pd.DataFrame(
                        {
                            "person_id": last["person_id"],
                            "value": last["value_as_number"],
                            "covariate_id": last["concept_id"] * 1000 + 150 + i,
                        }
                    )
                )
    out = pd.concat(parts, ignore_index=True).astype({"person_id": np.int64, "covariate_id": np.int64})
    return out.sort_values(["person_id", "covariate_id"]).reset_index(drop=True)


def pandas_cohort(root: Path):
    """The Book's study population of this generator's data in pandas (one observation period per person, no
    deaths, no age limit): first NSAID exposure (ingredients or their descendants), 364 days observed before
    it, no GI bleed before day 1, at least 364 days at risk or a bleed in them."""
    import pandas as pd

    ancestor = pd.read_parquet(root / "concept_ancestor.parquet")
    nsaids = set(NSAIDS) | set(ancestor.loc[ancestor["ancestor_concept_id"].isin(NSAIDS), "descendant_concept_id"])
    drugs = pd.read_parquet(
        root / "drug_exposure.parquet", columns=["person_id", "drug_concept_id", "drug_exposure_start_date"]
    )
    drugs = drugs[drugs["drug_concept_id"].isin(nsaids)]
    first = drugs.groupby("person_id")["drug_exposure_start_date"].min().rename("index_date").reset_index()
    periods = pd.read_parquet(root / "observation_period.parquet")
    cohort = first.merge(periods, on="person_id")
    idx, start, end = (
        pd.to_datetime(cohort[c])
        for c in ("index_date", "observation_period_start_date", "observation_period_end_date")
    )
    cohort = cohort[(idx >= start) & (idx <= end) & ((idx - start).dt.days >= 364)].copy()
    cohort["index_date"] = pd.to_datetime(cohort["index_date"])
    cohort["tar_start"] = cohort["index_date"] + pd.Timedelta(days=1)
    cohort["tar_end"] = (cohort["index_date"] + pd.Timedelta(days=365)).clip(
        upper=pd.to_datetime(cohort["observation_period_end_date"])
    )
    bleeds = pd.read_parquet(
        root / "condition_occurrence.parquet", columns=["person_id", "condition_concept_id", "condition_start_date"]
    )
    bleeds = bleeds[bleeds["condition_concept_id"] == GI_BLEED].merge(
        cohort[["person_id", "tar_start", "tar_end"]], on="person_id"
    )
    day = pd.to_datetime(bleeds["condition_start_date"])
    prior = set(bleeds.loc[day < bleeds["tar_start"], "person_id"])
    outcome = set(bleeds.loc[(day >= bleeds["tar_start"]) & (day <= bleeds["tar_end"]), "person_id"])
    cohort = cohort[~cohort["person_id"].isin(prior)]
    cohort["outcome"] = cohort["person_id"].isin(outcome).astype("int8")
    at_risk = (cohort["tar_end"] - cohort["tar_start"]).dt.days + 1
    return cohort[(at_risk >= 364) | (cohort["outcome"] == 1)][["person_id", "index_date", "outcome"]]


def pandas_meds(root: Path, path: Path) -> int:
    """The same MEDS table in pandas: static gender, birth, every event as ``<DOMAIN>//<concept>``, sorted by
    subject and time (static rows first), written with MEDS's schema. Returns its rows."""
    import meds
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    person = pd.read_parquet(root / "person.parquet")
    parts = [
        pd.DataFrame(
            {
                "subject_id": person["person_id"],
                "time": pd.NaT,
                "code": "GENDER//" + person["gender_concept_id"].astype(str),
            }
        ),
        pd.DataFrame(
            {
                "subject_id": person["person_id"],
                "time": pd.to_datetime(person["year_of_birth"].astype(str) + "-01-01"),
                "code": meds.birth_code,
            }
        ),
    ]
    domains = {
        "condition_occurrence": "CONDITION",
        "drug_exposure": "DRUG",
        "procedure_occurrence": "PROCEDURE",
        "measurement": "MEASUREMENT",
        "visit_occurrence": "VISIT",
    }
    for table, domain in domains.items():
        concept_col, date_col, _ = COLUMNS[table]
        ev = pd.read_parquet(root / f"{table}.parquet")
        part = pd.DataFrame(
            {
                "subject_id": ev["person_id"],
                "time": pd.to_datetime(ev[date_col]),
                "code": f"{domain}//" + ev[concept_col].astype(str),
            }
        )
        if table == "measurement":
            part["numeric_value"] = ev["value_as_number"].astype("float32")
        parts.append(part)
    rows = pd.concat(parts, ignore_index=True)
    rows["numeric_value"] = rows.get("numeric_value")
    rows["text_value"] = None
    rows = rows.sort_values(["subject_id", "time"], na_position="first", kind="stable")
    schema = meds.DataSchema.schema()
    table = pa.Table.from_pandas(rows[schema.names], preserve_index=False).cast(schema)
    pq.write_table(table, path)
    return table.num_rows


def run_pandas(root: str, out: str) -> dict:
    t0 = time.perf_counter()
    times = {}
    population = pandas_cohort(Path(root))
    times["cohort_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    meds_rows = pandas_meds(Path(root), Path(out) / "pandas_meds.parquet")
    times["meds_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pandas_covariates(Path(root), population).to_parquet(Path(out) / "pandas_covariates.parquet", index=False)
    times["covariates_s"] = time.perf_counter() - t
    return {
        "seconds": time.perf_counter() - t0,
        **{k: round(v, 2) for k, v in times.items()},
        "population": len(population),
        "meds_rows": meds_rows,
    }


def same_covariates(out: Path) -> bool:
    import polars as pl
    from polars.testing import assert_frame_equal

    ours = pl.read_parquet(out / "omop_covariates.parquet").sort("person_id", "covariate_id")
    theirs = pl.read_parquet(out / "pandas_covariates.parquet").sort("person_id", "covariate_id")
    try:
        assert_frame_equal(ours, theirs, check_dtypes=False, rel_tol=1e-6)
        return True
    except AssertionError as exc:
        print(f"# omop and pandas covariates differ: {str(exc)[:300]}", flush=True)
        return False


def run(
    persons: int,
    events: int,
    budget_mb: int | None = None,
    memory_limit: str | None = None,
    size: str = "custom",
    seed: int = 0,
) -> list[dict]:
    t0 = time.perf_counter()
    root = generate(bench_dir() / f"omop_{persons}_{events}_seed{seed}", persons, events, seed)
    gen_s = round(time.perf_counter() - t0, 1)
    work = bench_dir() / f"omop_out_{persons}_{events}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    records = []
    for impl in IMPLS:  # omop first: pandas reads the study population it wrote
        target = "bench.omop:run_omop" if impl == "omop" else "bench.omop:run_pandas"
        kwargs = {"root": str(root), "out": str(work)} | ({"memory_limit": memory_limit} if impl == "omop" else {})
        res = measure(target, kwargs, rlimit_as_mb=budget_mb)
        rec = {
            "name": NAME,
            "impl": impl,
            "size": size,
            "persons": persons,
            "events": events,
            "ok": res["ok"],
            "seconds": res.get("seconds"),
            "peak_rss_mb": res.get("peak_rss_mb"),
            "generate_s": gen_s,
            "rlimit_as_mb": budget_mb,
            "duckdb_memory_limit": memory_limit if impl == "omop" else None,
        }
        rec |= {
            k: v
            for k, v in res.items()
            if k.endswith("_s") and k != "wall_s" or k in ("population", "meds_rows", "covariate_rows")
        }
        if not res["ok"]:
            rec["error"] = res.get("error", "")[-300:]
        records.append(rec)
    ours, base = records
    if ours["ok"] and base["ok"]:
        ours["speedup_vs_pandas"] = round(base["seconds"] / ours["seconds"], 2)
        for step in ("cohort", "meds", "covariates"):
            ours[f"{step}_speedup_vs_pandas"] = round(base[f"{step}_s"] / max(ours[f"{step}_s"], 0.01), 2)
        ours["same_population_and_meds_rows"] = (ours["population"], ours["meds_rows"]) == (
            base["population"],
            base["meds_rows"],
        )
        ours["memory_vs_pandas"] = round(ours["peak_rss_mb"] / base["peak_rss_mb"], 3)
        if events <= 5_000_000:
            ours["matches_pandas"] = same_covariates(work)
    for rec in records:
        emit(rec)
    shutil.rmtree(work, ignore_errors=True)
    return records


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench omop")
    parser.add_argument("--size", default=None, help="smoke: 2,000 persons and 200,000 events")
    parser.add_argument("--persons", default="100k")
    parser.add_argument("--events", default="50m")
    parser.add_argument("--budget-mb", type=int, help="RLIMIT_AS for both (larger-than-memory run)")
    parser.add_argument("--memory-limit", help="DuckDB memory_limit, e.g. 2GB (it spills past it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size == "smoke":
        persons, events = 2_000, 200_000
    else:
        persons, events = parse_rows(args.persons, 0), parse_rows(args.events, 0)
    return run(
        persons, events, args.budget_mb, args.memory_limit, args.size or f"{args.persons}/{args.events}", args.seed
    )
