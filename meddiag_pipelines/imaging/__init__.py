"""Imaging modality: pure logic, no Dagster.

* ``readers``     one reader per format (PNG/JPEG folder, DICOM, MedMNIST npz) behind ``read_image_batch``
                  (``detect_format`` when the spec does not say); ``load_pixels`` gives one image as float32
                  (C, H, W) in [0, 1], refusing pixels that differ from the hash recorded at ingestion
* ``preprocess``  the memory-mapped per-batch tensor cache (``update_cache`` / ``load_cached``)
* ``model``       ``ResNet18Small``, a torch-only ResNet-18 adapted to 28-224 px inputs
* ``train``       ``train_image_model`` (AdamW + cosine, augmentation, class weights, early stopping on
                  validation AUROC, atomic checkpoints and resume) and ``predict_image_model``
* ``saliency``    Grad-CAM heat maps and a PNG panel
* ``validation``  the per-batch image checks (decodable, geometry, duplicates, the data's own split)

Synthetic phantoms for demos and tests are built by ``scripts/phantoms.py`` (not patient data).

Modules are imported on use (``from meddiag_pipelines.imaging.train import ...``) so that reading images does
not import torch.
"""
