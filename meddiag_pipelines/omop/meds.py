"""The events of a CDM batch as one MEDS data table (``subject_id``, ``time``, ``code``, ``numeric_value``,
``text_value``; the ``meds`` package's :class:`meds.DataSchema`), so MEDS tools can read it.

Codes: ``<DOMAIN>//<concept_id>`` (``CONDITION//192671``, ``DRUG//1118084``, ``MEASUREMENT//3006322`` ...)
at the event's date; ``MEDS_BIRTH`` at the birth date and ``MEDS_DEATH`` at the death date (``meds.birth_code``,
``meds.death_code``); the gender as a static ``GENDER//<concept_id>`` row with a null time. Era tables are left
out (they are derived from the exposures and conditions already there). Rows are sorted by subject and time,
static rows first (the order of rows at one time is unspecified). Events are those :mod:`.cdm` keeps (known
persons, dated between birth and today).
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meddiag_pipelines.atomic import atomic_write
from meddiag_pipelines.omop.cdm import Cdm

try:
    import meds
except ImportError:  # the `omop` extra (pyproject.toml): only the MEDS table needs it
    meds = None

MEDS_DOMAINS = ("condition", "drug", "procedure", "measurement", "observation", "visit", "device")
BATCH_ROWS = 1_000_000
# Rows sorted at once: the table is written in ranges of subjects holding about this many rows each, so the
# sort's memory does not grow with the batch.
CHUNK_ROWS = 2_000_000
# Row kinds (positions in :func:`_prefixes`): a code packs concept_id * KINDS + kind; birth and death have no concept.
KINDS = 16
NO_CONCEPT_KINDS = (1, 2)


def _schema():
    if meds is None:
        raise ImportError("the MEDS table needs the meds package: pip install 'meddiag_pipelines[omop]'")
    return meds.DataSchema.schema()


def _prefixes() -> pa.Array:
    """The code (static and birth/death rows) or code prefix of each row kind that :func:`meds_sql` numbers."""
    birth, death = ("MEDS_BIRTH", "MEDS_DEATH") if meds is None else (meds.birth_code, meds.death_code)
    return pa.array(["GENDER//", birth, death, *(f"{d.upper()}//" for d in MEDS_DOMAINS)])


def _has_text(cdm: Cdm) -> bool:
    """Whether any event holds a text value (without one, the sort need not carry an all-null text column)."""
    found = [f"SELECT 1 FROM ev_{d} WHERE text_value IS NOT NULL" for d in MEDS_DOMAINS if d in cdm.domains]
    return bool(found) and cdm.con.execute(f"SELECT EXISTS ({' UNION ALL '.join(found)})").fetchone()[0]


def meds_sql(cdm: Cdm, subjects: tuple[int, int] | None = None, *, text: bool = True) -> str:
    """The MEDS rows of the batch (of subjects in ``(low, high]`` when given) as one DuckDB query, sorted, with
    the code as a row kind (its position in :func:`_prefixes`) and a concept id: the sort then moves numbers
    only, and :func:`_to_meds` builds the code strings after it. ``text=False`` leaves out ``text_value``."""
    parts = [
        (
            "SELECT person_id AS subject_id, CAST(NULL AS TIMESTAMP) AS time, 0::UTINYINT AS kind, "
            "gender_concept_id AS concept_id, CAST(NULL AS FLOAT) AS numeric_value, "
            "CAST(NULL AS VARCHAR) AS text_value FROM person WHERE gender_concept_id IS NOT NULL"
        ),
        "SELECT person_id, CAST(birth_date AS TIMESTAMP), 1, NULL, NULL, NULL FROM person",
        "SELECT person_id, CAST(death_date AS TIMESTAMP), 2, NULL, NULL, NULL FROM person WHERE death_date IS NOT NULL",
    ]
    for kind, domain in enumerate(MEDS_DOMAINS, start=3):
        if domain in cdm.domains:
            parts.append(
                f"SELECT person_id, CAST(event_date AS TIMESTAMP), {kind}, concept_id, CAST(value AS FLOAT), "
                f"text_value FROM ev_{domain}"
            )
    where = f"WHERE subject_id > {int(subjects[0])} AND subject_id <= {int(subjects[1])} " if subjects else ""
    columns = "*" if text else "* EXCLUDE (text_value)"
    return f"SELECT {columns} FROM ({' UNION ALL '.join(parts)}) {where}ORDER BY subject_id, time NULLS FIRST"


def _codes(kind: pa.Array, concept: pa.Array, prefixes: pa.Array) -> pa.Array:
    """The code of each row: its kind's prefix followed by its concept id (the prefix alone for birth and death,
    which have none). A batch holds few distinct (kind, concept) pairs, so the strings are built once per pair
    and gathered (faster than building one string per row)."""
    try:
        key = pc.add_checked(pc.multiply_checked(pc.fill_null(concept, 0), KINDS), pc.cast(kind, pa.int64()))
    except pa.ArrowInvalid:  # a concept id too large to pack with its kind: build each row's string
        text = pc.cast(concept, pa.string())
        return pc.binary_join_element_wise(pc.take(prefixes, kind), text, "", null_handling="skip")
    encoded = pc.dictionary_encode(key)
    pairs = encoded.dictionary
    kinds = pc.subtract(pairs, pc.multiply(pc.divide(pairs, KINDS), KINDS))  # key mod KINDS, sign-safe below
    negative = pc.less(kinds, 0)
    kinds = pc.if_else(negative, pc.add(kinds, KINDS), kinds)
    concepts = pc.divide(pc.subtract(pairs, kinds), KINDS)
    without_concept = pc.is_in(kinds, pa.array(NO_CONCEPT_KINDS, pa.int64()))
    text = pc.if_else(without_concept, pa.scalar(None, pa.string()), pc.cast(concepts, pa.string()))
    strings = pc.binary_join_element_wise(pc.take(prefixes, kinds), text, "", null_handling="skip")
    return pc.take(strings, encoded.indices)


def _to_meds(batch: pa.RecordBatch, prefixes: pa.Array, schema: pa.Schema) -> pa.Table:
    """A batch of :func:`meds_sql` rows in MEDS's schema (a null text value where the batch has none)."""
    code = _codes(batch.column("kind"), batch.column("concept_id"), prefixes)
    names = batch.schema.names
    text = batch.column("text_value") if "text_value" in names else pa.nulls(batch.num_rows, pa.large_string())
    columns = [batch.column("subject_id"), batch.column("time"), code, batch.column("numeric_value"), text]
    return pa.Table.from_arrays(columns, names=schema.names).cast(schema)


def _subject_ranges(cdm: Cdm, chunk_rows: int) -> list[tuple[int, int]]:
    """``(low, high]`` person_id ranges of about ``chunk_rows`` MEDS rows each (by person count)."""
    con = cdm.con
    events = sum(con.execute(f"SELECT count(*) FROM ev_{d}").fetchone()[0] for d in MEDS_DOMAINS if d in cdm.domains)
    persons, low, high = con.execute("SELECT count(*), min(person_id) - 1, max(person_id) FROM person").fetchone()
    chunks = max(1, min(persons, -(-(events + 3 * persons) // chunk_rows)))
    if chunks == 1:
        return [(low, high)]
    cuts = con.execute(
        f"SELECT quantile_disc(person_id, [{', '.join(str(i / chunks) for i in range(1, chunks))}]) FROM person"
    ).fetchone()[0]
    bounds = [low, *sorted(set(cuts)), high]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def check_meds(path: Path) -> None:
    """Raise ValueError unless the file's schema is MEDS's data schema and its first row group validates."""
    schema = _schema()
    found = pq.read_schema(path)
    if not found.equals(schema):
        raise ValueError(f"{Path(path).name}: not the MEDS data schema")
    reader = pq.ParquetFile(path)
    if reader.num_row_groups:
        meds.DataSchema.validate(reader.read_row_group(0))


def write_meds(cdm: Cdm, path: Path, *, batch_rows: int = BATCH_ROWS, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Write the batch's MEDS table to ``path`` once (atomically; sorted ``chunk_rows`` rows at a time,
    streamed ``batch_rows`` at a time); an existing file is kept, not rewritten. Returns ``{"path", "rows",
    "written"}``."""
    path = Path(path)
    if path.exists():
        check_meds(path)
        return {"path": str(path), "rows": pq.ParquetFile(path).metadata.num_rows, "written": False}
    schema = _schema()
    rows = 0

    def write(tmp: Path) -> None:
        # Streamed from DuckDB's sort as Arrow batches straight into one Parquet file: no intermediate file.
        # Each batch is written by a second thread while DuckDB sorts and hands over the next (both release
        # the GIL); one write at a time, so the file's order is the sort's.
        nonlocal rows
        prefixes, text = _prefixes(), _has_text(cdm)
        with pq.ParquetWriter(tmp, schema) as writer, ThreadPoolExecutor(1) as pool:
            pending = None
            for subjects in _subject_ranges(cdm, chunk_rows):
                for batch in cdm.con.execute(meds_sql(cdm, subjects, text=text)).to_arrow_reader(batch_rows):
                    table = _to_meds(batch, prefixes, schema)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.write_table, table)
                    rows += table.num_rows
            if pending is not None:
                pending.result()

    atomic_write(path, write)
    check_meds(path)
    return {"path": str(path), "rows": rows, "written": True}
