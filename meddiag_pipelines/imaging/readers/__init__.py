"""Image readers: one per format behind one interface (no Dagster here).

``read_image_batch(batch_dir, spec)`` dispatches on ``spec.image.format`` (or, without it, on the format
detected from what landed: :func:`detect_format`) and returns an
:class:`ImageReadResult`: one record per readable image plus a list of ``(file, problem)`` for every file
that could not be used. One bad file never raises; a batch that cannot be read at all (an unreadable or
malformed ``labels.csv``, a batch folder that does not exist) raises :class:`ImageBatchError`.

Formats
-------
``folder``  PNG / JPEG files and ``labels.csv`` (columns: ``spec.image.file_column`` = path relative to the
            batch folder, ``spec.label``, optional ``spec.id`` (else the id is the relative path),
            ``spec.patient_id``, ``spec.subgroups``). Without ``labels.csv`` every image in the folder is
            an unlabelled case to score. With it, image files that the CSV does not list are rejected
            ("not listed"), so a typo never turns a labelled image into an unlabelled one silently.
``dicom``   DICOM files and the same ``labels.csv``. Pixel values go through the Modality LUT (rescale
            slope / intercept), then the VOI LUT or window centre / width, then to [0, 1]; MONOCHROME1 is
            inverted so that bright always means dense. Multi-frame files: ONE record per file, the middle
            frame (``source`` = ``file.dcm#<frame>``) -- a per-file label applies to the study, and a
            record per frame would leak frames of one file across splits whenever ``patient_id`` is
            missing (``read_dicom_batch(..., frames="all")`` gives one record per frame instead, with ids
            ``<id>#<frame>``). Without a ``patient_id`` column the DICOM PatientID is used. Compressed
            transfer syntaxes are decoded when pydicom can do it with the installed packages (RLE, and
            JPEG / JPEG 2000 through Pillow); others are rejected naming the transfer syntax.
``npz``     MedMNIST layout: ``{train,val,test}_images`` uint8 ``(N,H,W)`` or ``(N,H,W,3)`` and
            ``{train,val,test}_labels`` ``(N,1)`` class indices or ``(N,k)`` 0/1 (``spec.image.multi_label``).
            Every ``*.npz`` in the batch folder is read with ``allow_pickle=False``. Each record keeps the
            npz's own split in ``predefined_split``; ``source`` = ``file.npz#<split>:<i>``; ``id`` =
            ``<hash>_<split>_<i>``, the hash over the batch and the file's path (:func:`npz_record_id`).
            Labels: the class index as a string (``"0"``, ``"1"``...); multi-label: the ``|``-joined
            indices of the positive findings in ascending order (``"0|5"``), and ``""`` for a labelled
            image with no finding (see :func:`~meddiag_pipelines.labels.multilabel_matrix`). An images key
            without its labels key gives unlabelled records (label null). Unknown keys, object arrays,
            members that are not ``.npy`` arrays (a raw pickle), bad shapes / dtypes are rejected for the
            whole file (the file is the unit: the other npz files of the batch are read).

Safety: ``labels.csv`` and every path it names are confined to the batch folder before any stat or open (no
absolute paths, no ``..``, no symbolic links anywhere on the way, regular files only: a FIFO is never opened);
``./x.png`` and ``sub/x.png`` name files of the batch. Before any pixel is decoded a file is refused when it is
larger on disk than ``landing.max_file_mb``, when its header declares more than ``spec.image.max_pixels`` pixels,
or when its decoded size (PNG / JPEG: width x height x bands x bytes; DICOM: Rows x Columns x NumberOfFrames x
SamplesPerPixel x BitsAllocated / 8, a deflated data set also bounded while it inflates; npz: its members' sizes
from the zip directory) exceeds ``image.max_decoded_mb_per_file``, or would take the batch over
``image.max_decoded_mb_per_batch``.

Each image is decoded once at ingestion: its record carries the sha256 of its native pixels and the intensity
range of the decoded image (``intensity_min`` / ``intensity_max``, after windowing, in [0, 1]).
:func:`load_pixels` given that sha256 refuses a file whose pixels changed since, so the pixels validated are the
pixels cached and trained on. Labels are text in :func:`~meddiag_pipelines.specs.canonical_label` form.

Modules
-------
``records`` (the record schema, :class:`ImageReadResult`, the errors, :class:`DecodedBudget`), ``listing`` (paths
confined to the batch, ``labels.csv``, the images to read), one module per format (``folder``, ``dicom``,
``npz``), ``dicom_safety`` (a DICOM header read before any pixel, the deflate bound and the decoder check, shared
with ``imaging.volume_io``) and ``dispatch`` (:func:`detect_format`, :func:`read_image_batch`,
:func:`load_pixels`). Names with a leading underscore are private to this package; the names below and those of
``dicom_safety`` and ``listing.walk_files`` are its interface.
"""

from meddiag_pipelines.imaging.readers.dicom import read_dicom_batch
from meddiag_pipelines.imaging.readers.dispatch import (
    detect_format,
    load_pixels,
    read_image_batch,
    source_file,
    source_format,
)
from meddiag_pipelines.imaging.readers.folder import read_folder_batch
from meddiag_pipelines.imaging.readers.listing import LABELS_CSV, safe_path
from meddiag_pipelines.imaging.readers.npz import npz_record_id, read_npz_batch
from meddiag_pipelines.imaging.readers.records import (
    INTENSITY_MAX,
    INTENSITY_MIN,
    DecodedBudget,
    ImageBatchError,
    ImageReadResult,
    ImageRejected,
    records_schema,
)

__all__ = [
    "INTENSITY_MAX",
    "INTENSITY_MIN",
    "LABELS_CSV",
    "DecodedBudget",
    "ImageBatchError",
    "ImageReadResult",
    "ImageRejected",
    "detect_format",
    "load_pixels",
    "npz_record_id",
    "read_dicom_batch",
    "read_folder_batch",
    "read_image_batch",
    "read_npz_batch",
    "records_schema",
    "safe_path",
    "source_file",
    "source_format",
]
