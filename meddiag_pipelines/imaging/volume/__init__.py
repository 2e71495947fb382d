"""The volume modality (``modality: volume``): CT / MR volumes to a 3D CNN, on imaging's spine.

It lives in the imaging package because it is imaging in one more dimension: it shares imaging's trainer
(``imaging.train`` / ``imaging.tuning`` with ``spatial_dims`` 3: the 3D ResNet, augmentation, EMA, early stopping,
the optuna search), its tensor cache (``imaging.preprocess.cache_batch``), its checks (``imaging.validation``),
its pooled-pixel logistic baseline and scoring (``imaging.scoring``, pooled in 3D), its Grad-CAM (3D, shown as
three orthogonal slices: ``imaging.report``) and the ONNX export of its CNN (``registry.export``).

* ``readers``     ``read_volume_batch``: the ``npz`` format (MedMNIST 3D layout) here; ``dicom_series`` and
                  ``nifti`` through ``imaging.volume_io`` (``read_volume`` / ``to_model_input``); and
                  ``load_volume``, one record's cached tensor (1, S, S, S) in [0, 1]
* ``validation``  the per-record geometry checks (size, bit depth, constant volumes)
* ``modality``    :class:`VolumeModality`, the :class:`~meddiag_pipelines.modalities.base.Modality`

Synthetic phantoms for the bundled task and tests are built by ``scripts/volume_phantoms.py`` (not patient data).
"""
