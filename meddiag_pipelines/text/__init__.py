"""Text modality, pure logic (no Dagster): readers that scrub PHI at read (``readers``), the rule-based
scrubber (``deid``), the TF-IDF baseline and the fastText-style torch model with explanations (``models``), and
the builder of the bundled ``icd10_chapters`` task (``icd10_data``)."""
