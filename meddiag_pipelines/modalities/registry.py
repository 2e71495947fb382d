"""The registry of modalities: the spec's ``modality`` -> its :class:`~meddiag_pipelines.modalities.base.Modality`.

The bundled modalities are imported on first use (reading one kind of data does not import the others' model
libraries). A new modality is one package implementing the protocol, registered with :func:`register`; the
Dagster wiring in ``defs/`` builds its tasks unchanged."""

from __future__ import annotations

import importlib

from meddiag_pipelines import specs
from meddiag_pipelines.modalities.base import Modality

# name -> the module whose MODALITY implements it
BUNDLED = {
    "tabular": "meddiag_pipelines.tabular.modality",
    "image": "meddiag_pipelines.imaging.modality",
    "text": "meddiag_pipelines.text.modality",
    "omop": "meddiag_pipelines.omop.modality",
    "volume": "meddiag_pipelines.imaging.volume.modality",
}
_registered: dict[str, Modality] = {}


def register(modality: Modality) -> Modality:
    """Make ``modality`` available to task specs (``modality: <its name>``) and to the Dagster wiring."""
    name = modality.name
    if name in BUNDLED or _registered.get(name, modality) is not modality:
        raise ValueError(f"modality {name!r} is already registered")
    _registered[name] = modality
    specs.MODALITIES.add(name)
    return modality


def get(name: str) -> Modality:
    """The modality a spec names; a bundled one is imported now if it was not yet."""
    if name not in _registered and name in BUNDLED:
        _registered[name] = importlib.import_module(BUNDLED[name]).MODALITY
    if name not in _registered:
        raise KeyError(f"no modality {name!r} is registered (known: {', '.join(sorted(names()))})")
    return _registered[name]


def names() -> set[str]:
    return {*BUNDLED, *_registered}
