"""DICOM header reading and decoder checks shared by the 2D DICOM reader and the volume readers: a file's
header read before any pixel is decoded (a deflated file never inflated beyond it), the inflated size of a
deflated file bounded while it streams, and a transfer syntax whose pixels cannot be decoded refused in plain
words. Errors are :class:`~meddiag_pipelines.imaging.readers.records.ImageRejected` with messages that never quote
header bytes."""

from __future__ import annotations

import zlib
from typing import BinaryIO

from meddiag_pipelines.imaging.readers.records import ImageRejected

DEFLATED = "1.2.840.10008.1.2.1.99"
_DEFLATE_CHUNK = 1 << 14  # input read at once: deflate expands at most ~1032x, so under 17 MB out per chunk
HEADER_MAX = 1 << 24  # the inflated elements before the pixel data of a deflated file


def read_header(fh: BinaryIO):
    """The data set up to (not including) its pixel data, never inflating a deflated file beyond its header."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble

    fh.seek(0)
    read_preamble(fh, force=False)
    meta = _read_file_meta_info(fh)
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
        fh.seek(0)
        return pydicom.dcmread(fh, stop_before_pixels=True)
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fh.read(_DEFLATE_CHUNK * 64), HEADER_MAX)
    ds = read_dataset(DicomBytesIO(head), is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixel_data)
    ds.file_meta = meta
    return ds


def inflates_within(fh: BinaryIO, limit: float) -> bool:
    """Whether a deflated DICOM inflates to at most ``limit`` bytes, counted while streaming (nothing kept)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fh.seek(0)
    read_preamble(fh, force=False)
    _read_file_meta_info(fh)
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    while chunk := fh.read(_DEFLATE_CHUNK):
        total += len(inflater.decompress(chunk))
        if total > limit:
            return False
    return True


def check_decoder(tsyntax) -> None:
    """Refuse, in plain words, a transfer syntax whose pixel data cannot be decoded here."""
    if tsyntax is None:
        return
    from pydicom.uid import UID

    uid = UID(str(tsyntax))
    if not uid.is_transfer_syntax:
        raise ImageRejected("the file's TransferSyntaxUID is not a known DICOM transfer syntax")
    if not uid.is_compressed:
        return
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise ImageRejected(f"no pixel-data decoder for transfer syntax {uid.name!r}") from exc
    if not decoder.is_available:
        raise ImageRejected(
            f"compressed transfer syntax {uid.name!r} cannot be decoded with the installed packages "
            f"(needs one of: {'; '.join(decoder.missing_dependencies)})"
        )
