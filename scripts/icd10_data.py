"""Build the bundled ``icd10_chapters`` task: ICD-10-CM leaf-code descriptions labelled with their chapter.

Run by the maintainers (needs the dev extra: simple-icd-10-cm); the CSV is committed, so users never need it.

Source: the ICD-10-CM classification as shipped by the ``simple-icd-10-cm`` package (the classification is
published by the US CDC / NCHS and is in the public domain; the package is MIT-licensed). Every leaf code
gives one row: its description is the text and the chapter that holds it is the label
(``cm.get_ancestors(code)[-1]``); 74,731 distinct leaf codes (the package lists 5 of its 74,736 twice)
in 22 very unbalanced chapters.

Filter and cap, both documented in the task spec:

* chapters with fewer than ``MIN_PER_CHAPTER`` (200) leaf codes are dropped: only chapter 22, "Codes for
  special purposes" (3 codes: U07.0, U07.1, U09.9), is too small to learn or to evaluate;
* at most ``CAP_PER_CHAPTER`` (1,000) codes per chapter, a seeded random sample (seed 2024), to keep the
  demo and CI fast; the injuries chapter alone holds 41,144 codes. 21 chapters, 17,701 rows, 1.4 MB.

Leakage guard: ``category`` (the 3-character category, e.g. ``S72``) is the task's ``patient_id``, so the
patient-level hash split keeps all codes of one category in one split; sibling codes whose descriptions
differ by a word ("..., initial encounter" / "..., subsequent encounter") never straddle train and test.

Run ``python -m scripts.icd10_data`` to rewrite ``data/landing/icd10_chapters/batch_0001``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
from collections import defaultdict
from pathlib import Path

from meddiag_pipelines.atomic import atomic_write_bytes

MIN_PER_CHAPTER = 200
CAP_PER_CHAPTER = 1000
SEED = 2024
COLUMNS = ["code", "category", "chapter", "description"]

# Short, readable labels for the 22 chapters of ICD-10-CM (the chapter number is the key).
CHAPTER_LABELS: dict[str, str] = {
    "1": "infectious",
    "2": "neoplasms",
    "3": "blood_immune",
    "4": "endocrine_metabolic",
    "5": "mental_behavioural",
    "6": "nervous",
    "7": "eye",
    "8": "ear",
    "9": "circulatory",
    "10": "respiratory",
    "11": "digestive",
    "12": "skin",
    "13": "musculoskeletal",
    "14": "genitourinary",
    "15": "pregnancy",
    "16": "perinatal",
    "17": "congenital",
    "18": "symptoms_signs",
    "19": "injury_poisoning",
    "20": "external_causes",
    "21": "health_status_factors",
    "22": "special_purposes",
}


def all_leaf_rows() -> list[dict[str, str]]:
    """Every leaf code of ICD-10-CM as {code, category, chapter, description}."""
    import simple_icd_10_cm as cm

    rows = []
    seen: set[str] = set()
    for code in cm.get_all_codes(True):
        if code in seen or not cm.is_leaf(code):
            continue  # the package lists a few codes twice (F99, P84, R99, Z66, ...): one row each
        seen.add(code)
        chapter = cm.get_ancestors(code)[-1]
        rows.append(
            {
                "code": code,
                "category": code[:3],
                "chapter": CHAPTER_LABELS.get(chapter, f"chapter_{chapter}"),
                "description": cm.get_description(code),
            }
        )
    return rows


def build_dataset(
    min_per_chapter: int = MIN_PER_CHAPTER, cap_per_chapter: int | None = CAP_PER_CHAPTER, seed: int = SEED
) -> list[dict[str, str]]:
    """The filtered, capped rows, sorted by code (deterministic for a given seed)."""
    by_chapter: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in all_leaf_rows():
        by_chapter[row["chapter"]].append(row)
    rng = random.Random(seed)
    kept: list[dict[str, str]] = []
    for chapter in sorted(by_chapter):
        rows = by_chapter[chapter]
        if len(rows) < min_per_chapter:
            continue
        if cap_per_chapter is not None and len(rows) > cap_per_chapter:
            rows = rng.sample(rows, cap_per_chapter)
        kept.extend(rows)
    return sorted(kept, key=lambda r: r["code"])


def to_csv_bytes(rows: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_landing_batch(landing_dir: Path, batch: str = "batch_0001", **kwargs) -> Path:
    """Write ``<landing_dir>/<batch>/records.csv`` and then the ``_READY`` marker; returns the batch folder."""
    folder = Path(landing_dir) / batch
    for name, data in (("records.csv", to_csv_bytes(build_dataset(**kwargs))), ("_READY", b"")):
        atomic_write_bytes(folder / name, data)
        os.chmod(folder / name, 0o644)  # a bundled data file, readable like the rest of the repository
    return folder


def main() -> None:
    repo_landing = Path(__file__).resolve().parents[2] / "data" / "landing" / "icd10_chapters"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, default=repo_landing)
    parser.add_argument("--cap", type=int, default=CAP_PER_CHAPTER)
    args = parser.parse_args()
    folder = write_landing_batch(args.landing, cap_per_chapter=args.cap)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
