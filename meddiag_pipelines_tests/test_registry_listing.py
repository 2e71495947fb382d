"""``python -m meddiag_pipelines.registry list``: per version created, data partitions, code version, AUROC
with its CI, decision and reasons; on a registry built by the manifest's own functions."""

from __future__ import annotations

import json

import polars as pl

from meddiag_pipelines.registry.__main__ import main as registry_cli
from meddiag_pipelines.registry.manifest import build_manifest, summarize
from meddiag_pipelines.registry.promotion import Decision
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.storage import DataRoot

MODEL = {
    "name": "xgboost",
    "framework": "xgboost",
    "params": {"depth": 3},
    "val_score": 0.9,
    "classes": ["no", "yes"],
    "version": "",
    "device": "cpu",
}
BASELINE = {"name": "logistic_regression", "framework": "sklearn", "params": {}, "val_score": 0.8}


def ledger(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "batch_id": [f"batch_{i:04d}" for i in range(n, 0, -1)] + ["bad"],
            "content_hash": [f"h{i}" for i in range(n + 1)],
            "n_rows": [10] * (n + 1),
            "status": ["validated"] * n + ["quarantined"],
        }
    )


def publish(registry: ModelRegistry, version: str, batches: int, metrics: dict, decision: Decision) -> None:
    manifest = build_manifest(
        "t",
        ledger(batches),
        {**MODEL, "version": version},
        BASELINE,
        metrics,
        None,
        decision.as_dict(),
        "fp-" + version,
        "1.2.0+abc1234",
    )
    registry.publish("t", version, manifest)


def test_listing_shows_every_version_with_its_audit_fields(tmp_path, monkeypatch, capsys):
    registry = ModelRegistry(DataRoot(tmp_path))
    publish(
        registry,
        "v1",
        2,
        {"auroc": 0.91, "auroc_ci": [0.85, 0.95]},
        Decision(True, ["first model: AUROC 0.910 clears the floor 0.6"]),
    )
    publish(
        registry, "v2", 5, {"auroc": None, "macro_f1": 0.7}, Decision(False, ["candidate AUROC could not be computed"])
    )
    registry.set_champion("t", "v1", "test")
    latest = tmp_path / "reports" / "t" / "latest.json"  # the latest run's candidate duplicated v1
    latest.parent.mkdir(parents=True)
    latest.write_text(json.dumps({"version": "v1", "unchanged_candidate": "v3"}))
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(tmp_path))

    assert registry_cli(["list", "t", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == ["v1", "v2"]
    first, second = rows
    assert first["partitions"] == ["batch_0001", "batch_0002"]  # validated batches only, in order
    assert first["code_version"] == "1.2.0+abc1234" and first["created_utc"].startswith("20")
    assert (first["metric"], first["value"], first["ci"]) == ("AUROC", 0.91, [0.85, 0.95])
    assert first["decision"] == "promoted" and first["champion"] and not second["champion"]
    assert (first["unchanged_candidate"], second["unchanged_candidate"]) == ("v3", None)
    assert (second["metric"], second["value"], second["decision"]) == ("macro-F1", 0.7, "refused")
    assert second["reasons"] == ["candidate AUROC could not be computed"]

    assert registry_cli(["list"]) == 0  # every task
    table = capsys.readouterr().out
    assert table.startswith("t:\n") and "AUROC 0.910 (0.850-0.950)" in table and "macro-F1 0.700" in table
    assert "5: batch_0001 .. batch_0005" in table and "batch_0001, batch_0002" in table
    line = next(row for row in table.splitlines() if row.startswith("* "))
    assert "v1" in line and "promoted, latest run unchanged" in line and "1.2.0+abc1234" in line
    assert "- candidate AUROC could not be computed" in table


def test_summary_of_a_manifest_without_report_fields_still_reads(tmp_path):
    assert summarize({"version": "old", "decision": {"promote": True}})["created_utc"] is None
    registry = ModelRegistry(DataRoot(tmp_path), "")
    assert registry.tasks() == []
