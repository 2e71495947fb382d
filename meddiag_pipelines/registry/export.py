"""ONNX export of a published version's model, checked against onnxruntime on the version's test split.

``python -m meddiag_pipelines.registry export <task> <version>`` writes ``exports/<task>/<version>/model.onnx``
and ``parity.json`` under the data root (a published version folder is never rewritten), built in a hidden
folder and published by one rename, and only when onnxruntime's outputs match the model's own within
:data:`TOLERANCE` (max absolute difference over every test row: of the logits for a torch model, of the
probabilities ``predict`` gives for a tabular one). A version is immutable, so a second export of it is a no-op
that reports the recorded figure.

Each modality exports its own models (:meth:`~meddiag_pipelines.modalities.base.Modality.exportable`, given a
:class:`VersionToExport`): a torch module as an :class:`Exportable` (the module, its inputs' dynamic axes, a small
example to trace and the test split as model inputs; ``imaging/export.py``, ``text/export.py``), or a graph of
its own (``tabular/export.py``: XGBoost and the logistic model, with ``features.json``). A modality without one
is refused. torch, onnx, onnxmltools and onnxruntime (the ``large`` extra) are imported on use only.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import polars as pl

from meddiag_pipelines.atomic import atomic_write_json, publish_new_dir, staging_dir
from meddiag_pipelines.modalities import registry as modalities
from meddiag_pipelines.registry.store import ModelRegistry, RegistryError
from meddiag_pipelines.split import SPLIT_COLUMN
from meddiag_pipelines.storage import DataRoot, open_plan

TOLERANCE = 1e-4
CHUNK = 256  # test rows per run of both runtimes
ONNX_FILE, PARITY_FILE, FEATURES_FILE = "model.onnx", "parity.json", "features.json"


class ExportRefused(ValueError):
    """The version cannot be exported (a baseline with portable JSON weights, no test rows) or its ONNX outputs
    differ from the model's own."""


@dataclass
class Exportable:
    module: object  # a torch nn.Module in eval mode, on the CPU
    axes: dict[str, dict[int, str]]  # each input in forward order -> its dynamic axes (same name: same size)
    example: dict[str, np.ndarray]  # what the export traces: two rows, so no axis is fixed at size 1
    test_batches: Callable[[], Iterator[dict[str, np.ndarray]]]  # the test split as model inputs, in chunks
    n_test: int
    then: str  # how the logits become probabilities
    output: ClassVar[str] = "logits"
    reference: ClassVar[str] = "torch"  # what onnxruntime is compared with
    files: ClassVar[dict] = {}  # JSON files written beside the model

    def export_to(self, target: Path) -> dict:
        return _export_and_compare(self, target)


def export_dir(data_dir: Path | str, task: str, version: str) -> Path:
    """Where the export is written on this host (on an object-store root: its local folder)."""
    return DataRoot(data_dir).path(f"exports/{task}/{version}")


def export_version(data_dir: Path | str, task: str, version: str) -> dict:
    """Export ``version`` of ``task`` and check it; the parity record (``already_exported``: an earlier export's)."""
    root = DataRoot(data_dir)
    registry = ModelRegistry(root)
    known = registry.versions(task) if task in registry.tasks() else []
    if version not in known:  # also keeps the paths below inside the data root
        raise RegistryError(f"task {task!r} has no published version {version!r}; known: {known}")
    manifest = registry.manifest(task, version)
    final = export_dir(data_dir, task, version)
    if (final / PARITY_FILE).exists():
        return _recorded(final)
    version_dir = registry.version_dir(task, version)
    plan = open_plan(json.loads((version_dir / "plan.json").read_text()), root)
    exportable = adapter(task, version, manifest, plan, version_dir, root)
    staged = staging_dir(final)
    try:
        parity = exportable.export_to(staged / ONNX_FILE)
        output = exportable.output
        record = {
            "task": task,
            "version": version,
            "model": manifest["model"]["name"],
            "classes": manifest["model"]["classes"],
            "inputs": exportable.axes,
            "output": output,
            "then": exportable.then,
            "compared": output,
            "reference": exportable.reference,
            "n_test": exportable.n_test,
            **parity,
            "tolerance": TOLERANCE,
            "exported_at": time.time(),
        }
        if not record["max_abs_diff"] <= TOLERANCE:
            raise ExportRefused(
                f"{task} {version}: onnxruntime's {output} differ from {exportable.reference}'s by up "
                f"to {record['max_abs_diff']:.3g} on the test split (tolerance {TOLERANCE:g}): not exported"
            )
        for name, content in exportable.files.items():
            atomic_write_json(staged / name, content)
        atomic_write_json(staged / PARITY_FILE, record)
        publish_new_dir(staged, final)
    except FileExistsError:  # another export of this version published first
        shutil.rmtree(staged, ignore_errors=True)
        return _recorded(final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return {**record, "already_exported": False}


def _recorded(final: Path) -> dict:
    return {**json.loads((final / PARITY_FILE).read_text()), "already_exported": True}


def _export_and_compare(exportable: Exportable, target: Path) -> dict:
    import onnxruntime
    import torch

    names = list(exportable.axes)
    dims: dict[str, object] = {}
    shapes = tuple(
        {axis: dims.setdefault(n, torch.export.Dim(n)) for axis, n in exportable.axes[i].items()} for i in names
    )
    example = tuple(torch.from_numpy(exportable.example[n]) for n in names)
    program = torch.onnx.export(
        exportable.module,
        example,
        dynamo=True,
        input_names=names,
        output_names=["logits"],
        dynamic_shapes=shapes,
        verbose=False,
    )
    program.save(str(target))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    worst, shape = 0.0, None
    with torch.no_grad():
        for batch in exportable.test_batches():
            expected = exportable.module(*(torch.from_numpy(batch[n]) for n in names)).numpy()
            diff, shape = max_abs_diff(session, "logits", batch, expected, "torch")
            worst = max(worst, diff)
    return {
        "max_abs_diff": worst,
        "output_shape": ["batch", *shape],
        "opset": onnx_opset(target),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def max_abs_diff(
    session, output: str, feeds: dict[str, np.ndarray], expected: np.ndarray, reference: str
) -> tuple[float, tuple]:
    """onnxruntime's ``output`` on ``feeds`` against ``expected`` (the reference's): the largest absolute difference
    (infinite where either has a NaN) and the output's shape past the batch axis."""
    (got,) = session.run([output], feeds)
    if got.shape != expected.shape:
        raise ExportRefused(f"the ONNX model's output shape {got.shape} differs from {reference}'s {expected.shape}")
    diff = float(np.abs(got - expected).max(initial=0.0))
    return (diff if np.isfinite(diff) else np.inf), got.shape[1:]  # NaN: a mismatch


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# -- what each modality's export reads, and the dispatch to it --------------------------------------------------
class ModelExport(Protocol):
    """What a modality's export gives (:class:`Exportable` for a torch module, or a graph of its own): the
    parity record's fields and the export itself, which returns the comparison's figures."""

    axes: dict[str, dict[int, str]]
    n_test: int
    then: str
    output: str
    reference: str
    files: dict

    def export_to(self, target: Path) -> dict: ...


@dataclass(frozen=True)
class VersionToExport:
    """A published version, as :meth:`~meddiag_pipelines.modalities.base.Modality.exportable` reads it."""

    task: str
    version: str
    manifest: dict
    plan: dict
    version_dir: Path
    root: DataRoot

    @property
    def model_dir(self) -> Path:
        return self.version_dir / "model"

    @property
    def test_predictions(self) -> Path:
        return self.version_dir / "test_predictions.parquet"

    @cached_property
    def test_ids(self) -> list[str]:
        """The ids of the rows the version was evaluated on; :class:`ExportRefused` when there are none."""
        ids = pl.read_parquet(self.test_predictions, columns=["id"])["id"].to_list()
        if not ids:
            raise ExportRefused(f"{self.task} {self.version}: the version has no test rows to check an export against")
        return ids

    def test_rows(self, columns: list[str]) -> pl.DataFrame:
        """The test rows (``columns`` and the id; text: scrubbed), in the order of ``test_ids``."""
        return _test_rows(self.root, self.task, self.version, self.test_ids, columns)


def adapter(task: str, version: str, manifest: dict, plan: dict, version_dir: Path, root: DataRoot) -> ModelExport:
    """The export of the version's model by its modality (the plan's ``modality``; a tabular plan names none), or
    :class:`ExportRefused` naming what to use instead."""
    modality = modalities.get(plan.get("modality", "tabular"))
    exportable = modality.exportable(VersionToExport(task, version, manifest, plan, version_dir, root))
    if exportable is None:
        raise ExportRefused(f"{task} {version}: the {modality.name} modality has no ONNX export")
    return exportable


def _test_rows(root: DataRoot, task: str, version: str, test_ids: list[str], columns: list[str]) -> pl.DataFrame:
    """The rows (text: scrubbed) the version was evaluated on, in its test_predictions order: from the split table
    its run read (its own, else the newest written before it that holds ``columns`` and every test row)."""
    from meddiag_pipelines.specs import scan_specs

    spec = next((s for s in scan_specs().specs if s.name == task), None)
    if spec is None:
        raise ExportRefused(f"{task}: no spec of this task in the spec folders, so its test rows cannot be found")
    folder = root.relative(root.table(task, "split"))
    files = [f for f in root.list(folder) if f.endswith(".parquet") and f <= f"{version}.parquet"]
    for name in reversed(files):
        split = root.read_parquet(f"{folder}/{name}")
        if not {spec.id, *columns} <= set(split.columns):
            continue
        test = split.filter(pl.col(SPLIT_COLUMN) == "test")
        position = {key: n for n, key in enumerate(test[spec.id].cast(pl.String).to_list())}
        if all(i in position for i in test_ids):
            return test[[position[i] for i in test_ids]]
    raise ExportRefused(
        f"{task} {version}: no split table under {folder} holds the version's {len(test_ids)} test rows"
    )
