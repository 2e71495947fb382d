"""Imaging modality: pure logic, no Dagster.

* ``readers``     one reader per format (PNG/JPEG folder, DICOM, MedMNIST npz) behind ``read_image_batch``
                  (``detect_format`` when the spec does not say); ``load_pixels`` gives one image as float32
                  (C, H, W) in [0, 1], refusing pixels that differ from the hash recorded at ingestion
* ``preprocess``  the memory-mapped per-batch tensor cache (``update_cache`` / ``load_cached``)
* ``model``       ``ResNet18Small``, a torch-only ResNet-18 adapted to 28-224 px inputs (with ``hflip_tta``: the
                  mean of the image's and its mirror's logits in eval mode)
* ``backbones``   timm backbones (``image.backbone``): ``import_timm``, ``TimmClassifier``, weights from a local
                  safetensors / state-dict file (first conv adapted, keys checked) or timm's hub download
* ``train``       ``train_image_model`` (one ``ImageParams`` configuration: AdamW or SGD + cosine, fine-tuning
                  modes, augmentation, class weights, an EMA of the weights as the model kept, early stopping on
                  validation AUROC, atomic checkpoints and resume), ``load_image_model`` and ``predict_image_model``
* ``tuning``      ``fit_image_model``: the optuna search (pruned, time-bounded, resumable) or the one configuration
* ``saliency``    Grad-CAM heat maps (input gradients for ViTs) and a PNG panel
* ``validation``  the per-batch image checks (decodable, geometry, duplicates, the data's own split)
* ``volume_io``   CT / MR volumes: ``read_volume`` (a DICOM series or enhanced multi-frame file, a NIfTI file) to a
                  RAS+ ``Volume`` in physical units, ``list_series`` and MONAI's ``to_model_input``; refuses the
                  hostile and irregular inputs of issue 26
* ``volume``      the volume modality (CT / MR volumes, ``modality: volume``): its readers, checks and modality; it
                  trains, explains, scores and exports through the modules above with ``spatial_dims`` 3

Synthetic phantoms for demos and tests are built by ``scripts/phantoms.py`` (not patient data).

Modules are imported on use (``from meddiag_pipelines.imaging.train import ...``) so that reading images does
not import torch.
"""
