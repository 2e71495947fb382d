"""SYNTHETIC EHR generator: patients, encounters, labs and diagnoses as long Parquet tables.

Deterministic from a seed (each chunk draws from ``default_rng([seed, chunk])``), written chunk by chunk so
50 million lab rows never sit in memory at once (one chunk is ``CHUNK_LAB_ROWS`` rows, about 100 MB).
Nothing here is real patient data.

Shape of the data (chosen to look like a hospital lab feed, not a uniform grid):

* labs per patient are log-normal (median ~21, mean ~50, a long tail of heavily monitored patients);
* encounters per patient are 1 + Poisson(log-normal), capped by the patient's lab count; each patient's labs
  are spread over their encounters in time order;
* eight lab codes with their own frequency, unit, distribution and clinically plausible range, and a
  per-code rate of missing values (cancelled or haemolysed samples: the row exists, ``value`` is null);
* chart times strictly increase within a patient (gaps of 1 min to 3 days), so "last value" is well defined;
* diagnoses: Poisson(1.5) ICD-10 codes per encounter, Zipf-distributed over ~200 codes;
* patients: sex (1% unknown), birth year, site.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

CHUNK_LAB_ROWS = 2_000_000
MEAN_LABS_PER_PATIENT = 50
LAB_SIGMA = 1.3  # log-normal shape of labs per patient

# code: (share of rows, unit, distribution, a, b, low, high, missing rate)
LABS = {
    "glucose": (0.20, "mg/dL", "lognormal", np.log(110), 0.25, 20, 1200, 0.03),
    "sodium": (0.16, "mmol/L", "normal", 139.0, 3.5, 100, 180, 0.02),
    "potassium": (0.16, "mmol/L", "normal", 4.2, 0.5, 1.5, 9.0, 0.06),
    "creatinine": (0.14, "mg/dL", "lognormal", np.log(1.0), 0.45, 0.1, 20, 0.03),
    "hemoglobin": (0.14, "g/dL", "normal", 12.8, 1.9, 3.0, 22, 0.04),
    "wbc": (0.10, "10^9/L", "lognormal", np.log(8.0), 0.4, 0.1, 200, 0.05),
    "lactate": (0.05, "mmol/L", "lognormal", np.log(1.4), 0.5, 0.2, 25, 0.12),
    "crp": (0.05, "mg/L", "lognormal", np.log(12.0), 1.2, 0.1, 500, 0.08),
}
LAB_CODES = sorted(LABS)
ENCOUNTER_TYPES = np.array(["outpatient", "emergency", "inpatient"])
SITES = np.array(["north", "south", "east", "west"])
EPOCH_2015 = np.datetime64("2015-01-01T00:00:00", "s").astype(np.int64)
TEN_YEARS_S = 10 * 365 * 86400


def _icd10_codes() -> np.ndarray:
    common = [
        "I10",
        "E11.9",
        "E78.5",
        "J18.9",
        "N18.3",
        "I50.9",
        "J44.9",
        "N39.0",
        "A41.9",
        "I48.91",
        "E87.1",
        "D64.9",
        "K21.9",
        "F32.9",
        "M54.5",
        "R07.9",
        "R50.9",
        "Z00.00",
    ]
    rng = np.random.default_rng(0)
    letters = "ABCDEFGIJKLMNR"
    more = {
        f"{letters[rng.integers(len(letters))]}{rng.integers(0, 100):02d}.{rng.integers(0, 10)}" for _ in range(400)
    }
    return np.array(common + sorted(more - set(common))[: 200 - len(common)])


ICD10 = _icd10_codes()
_ZIPF = 1.0 / np.arange(1, len(ICD10) + 1) ** 1.1
_ZIPF /= _ZIPF.sum()


@dataclass(frozen=True)
class EhrDataset:
    root: Path

    def table(self, name: str) -> Path:
        return self.root / name

    def glob(self, name: str) -> str:
        return str(self.root / name / "*.parquet")

    @property
    def meta(self) -> dict:
        return json.loads((self.root / "_DONE").read_text())


def _us(seconds: np.ndarray) -> np.ndarray:
    return (seconds * 1_000_000).astype("datetime64[us]")


def _chunk(seed: int, index: int, n_patients: int, first_patient: int, first_encounter: int):
    rng = np.random.default_rng([seed, index])
    mu = np.log(MEAN_LABS_PER_PATIENT) - LAB_SIGMA**2 / 2
    n_labs = np.clip(np.ceil(rng.lognormal(mu, LAB_SIGMA, n_patients)), 1, 5000).astype(np.int64)
    n_enc = np.minimum(1 + rng.poisson(rng.lognormal(0.7, 0.9, n_patients)), n_labs).astype(np.int64)
    total = int(n_labs.sum())
    patient_local = np.repeat(np.arange(n_patients), n_labs)
    starts = np.cumsum(n_labs) - n_labs  # first lab row of each patient
    pos = np.arange(total) - np.repeat(starts, n_labs)  # position of the row within its patient
    # encounters split each patient's time-ordered labs into n_enc contiguous runs
    enc_local = (pos * np.repeat(n_enc, n_labs)) // np.repeat(n_labs, n_labs)
    enc_offset = np.cumsum(n_enc) - n_enc
    encounter_id = first_encounter + np.repeat(enc_offset, n_labs) + enc_local
    # strictly increasing chart times within a patient
    gaps = rng.integers(60, 3 * 86400, total)
    csum = np.cumsum(gaps)
    csum -= np.repeat(csum[starts] - gaps[starts], n_labs)
    t0 = EPOCH_2015 + rng.integers(0, TEN_YEARS_S, n_patients)
    charttime = np.repeat(t0, n_labs) + csum
    shares = np.array([LABS[c][0] for c in LAB_CODES])
    code_idx = rng.choice(len(LAB_CODES), size=total, p=shares / shares.sum())
    value = np.empty(total)
    for k, code in enumerate(LAB_CODES):
        _, _, dist, a, b, low, high, miss = LABS[code]
        sel = code_idx == k
        n = int(sel.sum())
        draw = rng.lognormal(a, b, n) if dist == "lognormal" else rng.normal(a, b, n)
        draw = np.round(np.clip(draw, low, high), 2)
        draw[rng.random(n) < miss] = np.nan
        value[sel] = draw
    code = pl.col("lab_code").replace_strict(dict(enumerate(LAB_CODES)), return_dtype=pl.String)
    unit = pl.col("unit").replace_strict({k: LABS[c][1] for k, c in enumerate(LAB_CODES)}, return_dtype=pl.String)
    labs = pl.DataFrame(
        {
            "patient_id": first_patient + patient_local,
            "encounter_id": encounter_id,
            "lab_code": code_idx,
            "charttime": _us(charttime),
            "value": value,
            "unit": code_idx,
        }
    ).with_columns(code, pl.col("value").fill_nan(None), unit)

    n_encounters = int(n_enc.sum())
    enc_first_row = np.flatnonzero(np.r_[True, np.diff(encounter_id) != 0])
    admit = charttime[enc_first_row] - rng.integers(0, 6 * 3600, n_encounters)
    enc_patient = first_patient + np.repeat(np.arange(n_patients), n_enc)
    enc_type = ENCOUNTER_TYPES[rng.choice(3, size=n_encounters, p=[0.6, 0.25, 0.15])]
    stay = np.where(
        enc_type == "inpatient",
        rng.integers(86400, 14 * 86400, n_encounters),
        rng.integers(1800, 12 * 3600, n_encounters),
    )
    encounters = pl.DataFrame(
        {
            "encounter_id": first_encounter + np.arange(n_encounters),
            "patient_id": enc_patient,
            "encounter_type": enc_type,
            "admit_time": _us(admit),
            "discharge_time": _us(admit + stay),
        }
    )

    n_dx = rng.poisson(1.5, n_encounters)
    dx_enc = np.repeat(np.arange(n_encounters), n_dx)
    diagnoses = pl.DataFrame(
        {
            "patient_id": enc_patient[dx_enc],
            "encounter_id": first_encounter + dx_enc,
            "icd10": ICD10[rng.choice(len(ICD10), size=len(dx_enc), p=_ZIPF)],
            "seq": (np.arange(len(dx_enc)) - np.repeat(np.cumsum(n_dx) - n_dx, n_dx)).astype(np.int16),
        }
    )

    sex = rng.choice(np.array(["F", "M", None], dtype=object), size=n_patients, p=[0.51, 0.48, 0.01])
    patients = pl.DataFrame(
        {
            "patient_id": first_patient + np.arange(n_patients),
            "sex": sex,
            "birth_year": rng.integers(1925, 2020, n_patients).astype(np.int16),
            "site": SITES[rng.integers(0, 4, n_patients)],
        }
    )
    return patients, encounters, labs, diagnoses


def generate(root: Path, lab_rows: int, seed: int = 0, chunk_rows: int = CHUNK_LAB_ROWS) -> EhrDataset:
    """Write about ``lab_rows`` lab rows (exactly that many) and the matching tables under ``root``.

    Reuses ``root`` when a finished dataset with the same parameters is already there."""
    root = Path(root)
    params = {"lab_rows": lab_rows, "seed": seed, "chunk_rows": chunk_rows, "version": 1}
    done = root / "_DONE"
    if done.exists() and {k: v for k, v in json.loads(done.read_text()).items() if k in params} == params:
        return EhrDataset(root)
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    for name in ("patients", "encounters", "labs", "diagnoses"):
        (root / name).mkdir(parents=True)
    per_chunk = max(1, chunk_rows // MEAN_LABS_PER_PATIENT)
    written = index = first_patient = first_encounter = 0
    counts = dict.fromkeys(("patients", "encounters", "labs", "diagnoses"), 0)
    while written < lab_rows:
        patients, encounters, labs, diagnoses = _chunk(seed, index, per_chunk, first_patient, first_encounter)
        if written + labs.height > lab_rows:  # last chunk: keep whole patients up to the row budget
            labs = labs.head(lab_rows - written)
            last = int(labs["patient_id"].max())
            patients = patients.filter(pl.col("patient_id") <= last)
            encounters = encounters.filter(pl.col("patient_id") <= last)
            diagnoses = diagnoses.filter(pl.col("patient_id") <= last)
        for name, frame in (
            ("patients", patients),
            ("encounters", encounters),
            ("labs", labs),
            ("diagnoses", diagnoses),
        ):
            frame.write_parquet(root / name / f"part-{index:05d}.parquet", row_group_size=256_000)
            counts[name] += frame.height
        written += labs.height
        first_patient += per_chunk
        first_encounter += encounters.height
        index += 1
    done.write_text(json.dumps({**params, "rows": counts, "chunks": index}))
    return EhrDataset(root)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a SYNTHETIC EHR dataset as Parquet.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--lab-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(generate(args.root, args.lab_rows, args.seed).meta))
