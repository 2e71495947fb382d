"""Text modality, pure logic (no Dagster): readers that scrub PHI at read (``readers``), the rule-based
scrubber (``deid``), the batch checks (``validation``), and the TF-IDF baseline and the fastText-style torch
model with explanations (``models``). The bundled ``icd10_chapters`` data is built by ``scripts/icd10_data.py``."""
