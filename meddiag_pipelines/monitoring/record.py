"""``reports/<task>/monitoring.json`` and the monitoring report beside it (``monitoring.html``).

``monitoring.json`` is a list with one entry per scored batch (a batch and the version that scored it), in the
order they were recorded::

    {"batch", "model_version", "at", "n_rows",
     "drift": {"dataset_drift", "share", "columns": {...}, "prediction", "embeddings", ...},   # drift.batch_drift
     "estimated": {"metric", "auroc" | "macro_f1", "ci", "n", "assumes", ...} | null,       # estimate
     "realised": null until labels land, then {"metric", "auroc" | "macro_f1", "ci", "n", ..., "breach"},
     "alerts": [{"severity": "WARN" | "ERROR", "kind", "text"}]}

Drift (features, predictions or embeddings) is a WARN; a realised breach of the gate's criteria an ERROR. The
file is rewritten whole and atomically (``DataRoot.write_json``) to append an entry or to fill an entry's
``realised``; nothing else in it changes. Writers of one task are serialised by its concurrency pool (one run
per task), so a read-modify-write never loses another's entry.
"""

from __future__ import annotations

import base64
import io
import time
from html import escape

import numpy as np

from meddiag_pipelines.evaluation.metrics.jsonable import to_jsonable
from meddiag_pipelines.storage import DataRoot

MONITORING_JSON = "monitoring.json"
MONITORING_HTML = "monitoring.html"
WARN, ERROR = "WARN", "ERROR"


def monitoring_rel(task: str, name: str = MONITORING_JSON) -> str:
    return f"reports/{task}/{name}"


def read_monitoring(root: DataRoot, task: str) -> list[dict]:
    rel = monitoring_rel(task)
    return root.read_json(rel) if root.exists(rel) else []


def entry_alerts(entry: dict) -> list[dict]:
    """WARN for drift of the features, the predictions or the embeddings; ERROR for a realised breach."""
    drift, alerts = entry.get("drift") or {}, []
    if drift.get("dataset_drift"):
        text = (
            f"{drift['n_drifted']} of {drift['n_columns']} columns drifted (share {drift['share']:.2f} >= "
            f"{drift['drift_share']})"
        )
        alerts.append({"severity": WARN, "kind": "feature_drift", "text": text})
    if (drift.get("prediction") or {}).get("dataset_drift"):
        alerts.append({"severity": WARN, "kind": "prediction_drift", "text": "the predictions drifted"})
    embeddings = drift.get("embeddings") or {}
    if embeddings.get("drifted"):
        alerts.append(
            {"severity": WARN, "kind": "embedding_drift", "text": f"embeddings drifted ({_mmd_text(embeddings)})"}
        )
    breach = (entry.get("realised") or {}).get("breach") or {}
    if breach.get("breach"):
        alerts.append({"severity": ERROR, "kind": "realised_breach", "text": breach["reasons"][0]})
    return alerts


def _mmd_text(embeddings: dict | None) -> str:
    if not embeddings:
        return "\u2014"
    if embeddings.get("p_value") is None:
        return "too few rows to test"
    return (
        f"MMD\u00b2 {embeddings['statistic']:.4f}, p {embeddings['p_value']:.3f}"
        f"{' <' if embeddings['drifted'] else ' >='} {embeddings['threshold']}"
    )


def monitoring_entry(
    batch: str, model_version: str, drift: dict, estimated: dict | None, at: float | None = None
) -> dict:
    entry = {
        "batch": batch,
        "model_version": model_version,
        "at": time.time() if at is None else at,
        "n_rows": drift.get("n_rows"),
        "drift": drift,
        "estimated": estimated,
        "realised": None,
    }
    return to_jsonable({**entry, "alerts": entry_alerts(entry)})


def _find(entries: list[dict], batch: str, model_version: str) -> int | None:
    return next((i for i, e in enumerate(entries) if e["batch"] == batch and e["model_version"] == model_version), None)


def append_entry(root: DataRoot, task: str, entry: dict) -> bool:
    """Append ``entry`` (:func:`monitoring_entry`); False, and nothing written, when its batch and version are
    recorded already (a batch's predictions by a version are never rewritten, so neither is its entry)."""
    entries = read_monitoring(root, task)
    if _find(entries, entry["batch"], entry["model_version"]) is not None:
        return False
    root.write_json(monitoring_rel(task), [*entries, entry])
    return True


def record_realised(root: DataRoot, task: str, batch: str, model_version: str, realised: dict) -> bool:
    """Set the ``realised`` figure (``labels.realised_performance`` with its ``breach``) of one entry, and its
    alerts; False when the batch has no entry for that version."""
    entries = read_monitoring(root, task)
    i = _find(entries, batch, model_version)
    if i is None:
        return False
    entry = {**entries[i], "realised": to_jsonable(realised)}
    entries[i] = {**entry, "alerts": entry_alerts(entry)}
    root.write_json(monitoring_rel(task), entries)
    return True


# -- the report ------------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _version_bands(ax, entries: list[dict]) -> None:
    """A dotted line where the version in use changes, labelled with the new version."""
    for i in range(1, len(entries)):
        if entries[i]["model_version"] != entries[i - 1]["model_version"]:
            ax.axvline(i - 0.5, color="#777777", ls=":", lw=1)
            ax.text(
                i - 0.45,
                0.02,
                entries[i]["model_version"][:16],
                rotation=90,
                fontsize=7,
                color="#555555",
                transform=ax.get_xaxis_transform(),
            )


def plot_drift(entries: list[dict]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.4), layout="constrained")
    ax = fig.add_subplot()
    share = [e["drift"]["share"] for e in entries]
    colours = ["#c2571a" if e["drift"]["dataset_drift"] else "#1f5fa8" for e in entries]
    ax.bar(range(len(entries)), share, color=colours)
    ax.axhline(entries[0]["drift"]["drift_share"], color="#c2571a", ls="--", lw=1, label="dataset drift at this share")
    _version_bands(ax, entries)
    ax.set(
        title="Share of drifted columns per scored batch",
        xlabel="scored batch (in order)",
        ylabel="share of columns drifted",
        ylim=(0, 1.05),
    )
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _series(entries: list[dict], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per entry with a ``key`` figure: its index, the figure and its 95% interval (the figure itself when none;
    a bootstrap interval may lie beside its point on few rows, so it is drawn as it is, not as +/- errors)."""
    xs, ys, lows, highs = [], [], [], []
    for i, e in enumerate(entries):
        block = e.get(key) or {}
        value = block.get(block.get("metric", ""))
        if value is None:
            continue
        low, high = block.get("ci") or (value, value)
        xs.append(i)
        ys.append(value)
        lows.append(value if low is None else low)
        highs.append(value if high is None else high)
    return xs, ys, lows, highs


def plot_performance(entries: list[dict]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for key, colour, offset in (("estimated", "#777777", -0.12), ("realised", "#1f5fa8", 0.12)):
        xs, ys, lows, highs = _series(entries, key)
        if xs:
            label = f"{key} (95% interval)" + (", assumes no concept drift" if key == "estimated" else "")
            at = np.asarray(xs) + offset
            ax.vlines(at, lows, highs, color=colour)
            ax.plot(at, ys, "o", color=colour, label=label)
    _version_bands(ax, entries)
    ax.set(title="Performance per scored batch", xlabel="scored batch (in order)", ylabel="AUROC / macro-F1")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def _figure(png: bytes, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure><img src="{uri}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'


def _figure_text(block: dict | None) -> str:
    if not block or block.get(block.get("metric", "")) is None:
        return "\u2014"
    ci = block.get("ci")
    ci_text = f" ({ci[0]:.3f}\u2013{ci[1]:.3f})" if ci and None not in ci else ""
    return f"{block['metric']} {block[block['metric']]:.3f}{ci_text}, n {block.get('n')}"


def _batch_rows(entries: list[dict]) -> str:
    rows = []
    for e in entries:
        alerts = "; ".join(f"{a['severity']}: {a['text']}" for a in e.get("alerts") or []) or "none"
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e["at"]))
        cells = [
            e["batch"],
            e["model_version"],
            when,
            str(e.get("n_rows")),
            f"{e['drift']['share']:.2f}",
            "yes" if e["drift"]["dataset_drift"] else "no",
            _mmd_text(e["drift"].get("embeddings")),
            _figure_text(e.get("estimated")),
            _figure_text(e.get("realised")),
            alerts,
        ]
        css = (
            ' class="error"'
            if any(a["severity"] == ERROR for a in e.get("alerts") or [])
            else ' class="warn"'
            if e.get("alerts")
            else ""
        )
        rows.append(f"<tr{css}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


def _embedding_note(entries: list[dict]) -> str:
    """The embedding test's name and level, when some batch was tested on the model's embeddings."""
    tested = [e["drift"]["embeddings"] for e in entries if e["drift"].get("embeddings")]
    if not tested:
        return ""
    methods = ", ".join(dict.fromkeys(t["method"] for t in tested))
    return (
        f"<p>Embedding drift (the model's own embeddings against those frozen with its version): {escape(methods)}; "
        f"a batch drifts on its embeddings when p &lt; {tested[-1]['threshold']}: a WARN.</p>"
    )


def _versions(entries: list[dict]) -> str:
    spans: list[list] = []
    for e in entries:
        if not spans or spans[-1][0] != e["model_version"]:
            spans.append([e["model_version"], e["batch"], e["batch"], 0])
        spans[-1][2], spans[-1][3] = e["batch"], spans[-1][3] + 1
    return "\n".join(
        f"<tr><td>{escape(v)}</td><td>{escape(a)}</td><td>{escape(b)}</td><td>{n}</td></tr>" for v, a, b, n in spans
    )


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1180px;margin:0 auto;padding:24px;font-size:14px}"
    "table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #d5dae0;padding:4px 8px;text-align:left}"
    "th{background:#f6f8fa}tr.warn td{background:#fff1e6}tr.error td{background:#fde2e2}"
    "figure{margin:8px 0}figcaption,.note{color:#5b6470;font-size:12px}"
)


def render_monitoring_html(task: str, entries: list[dict]) -> str:
    """One self-contained HTML page (plots embedded as PNG data URIs, no script, nothing loaded from outside):
    drift share and realised / estimated performance per scored batch with their intervals, the alerts, and the
    versions in use over time. Aggregates only: no record, id or value of a case."""
    head = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Monitoring: {escape(task)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>Monitoring: {escape(task)}</h1>"
    )
    if not entries:
        return head + "<p>No batch has been scored yet.</p></body></html>\n"
    n_alerts = sum(len(e.get("alerts") or []) for e in entries)
    body = [
        (
            f"<p>{len(entries)} scored batch(es); {n_alerts} alert(s). Drift is Evidently's decision with its defaults "
            "(a batch drifts when half its columns do): a WARN. A realised breach of the promotion gate's criteria: an "
            "ERROR. Estimated performance assumes no concept drift.</p>"
        ),
        _embedding_note(entries),
        _figure(plot_drift(entries), "Share of drifted columns per scored batch"),
        _figure(plot_performance(entries), "Estimated and realised performance with 95% intervals"),
        (
            "<h2>Batches</h2><table><tr><th>batch</th><th>version</th><th>recorded (UTC)</th><th>rows</th>"
            "<th>drift share</th><th>dataset drift</th><th>embedding drift</th><th>estimated</th><th>realised</th><th>alerts</th></tr>"
        ),
        _batch_rows(entries),
        "</table>",
        (
            "<h2>Versions in use</h2><table><tr><th>version</th><th>first batch</th><th>last batch</th>"
            "<th>batches</th></tr>"
        ),
        _versions(entries),
        "</table>",
    ]
    return head + "\n".join(body) + "</body></html>\n"


def write_monitoring_report(root: DataRoot, task: str) -> str:
    """Render ``monitoring.html`` from ``monitoring.json`` beside it (replaced whole); its path relative to the root."""
    return root.write_bytes(
        monitoring_rel(task, MONITORING_HTML), render_monitoring_html(task, read_monitoring(root, task)).encode()
    )
