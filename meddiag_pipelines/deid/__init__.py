"""Protected health information in free text: found and replaced by typed placeholders (``rules``), with the
bundled name lists it uses (``names``). Core, not part of the text modality: the text readers scrub every note
with it, and the tabular feature step warns of categorical levels that look like identifiers."""
