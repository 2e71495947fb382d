"""Watching a champion in use (issue 28), as plain functions with JSON-able outputs; no Dagster here.

* ``reference``: the statistics (and bounded samples) of a version's training data, validation predictions and,
  for images and text, embeddings; frozen once beside the version, never recomputed.
* ``drift``: per scored batch, feature and prediction drift against the reference with Evidently's own defaults
  (and embedding drift for images and text).
* ``labels``: labels that arrive later (a batch holding only the id and label columns), joined to the
  predictions a version made: realised performance with its CI, and the promotion gate's margins as breaches.
* ``estimate``: a confidence-based estimate of performance until labels arrive (it assumes no concept drift).
* ``record``: ``reports/<task>/monitoring.json`` (one entry per scored batch) and the monitoring report (HTML).
* ``change_control``: the model card's "Change-control plan" section, from the gate's settings and the registry.

Evidently's anonymous usage telemetry is off on every path: importing this package sets ``DO_NOT_TRACK`` (read by
``evidently.telemetry``), ``ITERATIVE_DO_NOT_TRACK`` (read by the ``iterative_telemetry`` logger it uses) and
``EVIDENTLY_DISABLE_TELEMETRY=1`` (read by ``evidently.legacy._config``) before any module here imports Evidently
(only ``drift`` does, when it first computes drift). Computing drift opens no connection (a test holds it).
"""

import os

# Before any import of evidently: the switches are read when evidently's modules load.
os.environ.setdefault("DO_NOT_TRACK", "1")  # any value turns evidently.telemetry's event logger off
os.environ.setdefault("ITERATIVE_DO_NOT_TRACK", "1")  # the same for the iterative_telemetry logger itself
os.environ["EVIDENTLY_DISABLE_TELEMETRY"] = "1"  # only "1" turns the legacy switch off
