"""Modalities as plug-ins: the protocol every modality implements (``base.Modality``) and the registry that
maps a spec's ``modality`` to its implementation (``registry``). The implementations live in the modality
packages (``tabular/modality.py``, ``imaging/modality.py``, ``text/modality.py``); none imports Dagster."""
