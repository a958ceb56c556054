"""A fast header reader for the common case: uncompressed Little Endian DICOM files.

pydicom builds a full Python object per element, about a millisecond per file:
too slow for the 8,000 files of a dynamic PET series.  This reader walks the
top-level elements with ``struct`` and converts only the attributes the loader
needs (``FAST_KEYWORDS``); it keeps the raw bytes of every other top-level element
so that files can be grouped by content without parsing it, and it remembers where
the pixel data start so they can be read straight into NumPy.

Anything it does not handle (no preamble, big endian, deflate, encapsulated pixel
data, a malformed element) returns None and the caller falls back to pydicom; the
returned :class:`FastHeader` also parses the whole file with pydicom on demand
(``full()``) for attributes outside the fast set, so callers see one interface.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword

__all__ = ["FastHeader", "read_fast", "FAST_KEYWORDS"]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"SV", b"UV", b"UC", b"UR"}
_PIXEL_DATA = 0x7FE00010

#: attributes converted eagerly (everything the loader and scan touch per file)
FAST_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "ImageType", "PatientID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "AcquisitionDateTime", "SeriesNumber",
    "SeriesDescription", "InstanceNumber", "AcquisitionNumber", "TemporalPositionIdentifier",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "GantryDetectorTilt", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "EchoTime", "EchoNumbers",
    "ComplexImageComponent", "FrameReferenceTime", "ActualFrameDuration", "ImageIndex", "NumberOfSlices",
    "NumberOfTimeSlices", "Units", "DecayCorrection", "Manufacturer", "PhotometricInterpretation",
)
#: top-level attributes that differ per slice without changing quantification (left out of content keys)
_PER_SLICE = {tag_for_keyword(k) for k in (
    "SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "ImageIndex", "RescaleSlope",
    "RescaleIntercept", "LargestImagePixelValue", "SmallestImagePixelValue", "WindowCenter", "WindowWidth",
    "ContentTime", "InStackPositionNumber", "WindowCenterWidthExplanation", "ImageComments")}

#: structural attributes whose presence is asked per file
_PRESENCE = frozenset(tag_for_keyword(k) for k in (
    "PerFrameFunctionalGroupsSequence", "DetectorInformationSequence", "DirectoryRecordSequence",
    "SharedFunctionalGroupsSequence"))
_FAST_TAGS = {tag_for_keyword(k): (k, dictionary_VR(tag_for_keyword(k))) for k in FAST_KEYWORDS}
_NUMERIC_BIN = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


def _convert(vr: str, raw: bytes):
    if vr in _NUMERIC_BIN:
        code = _NUMERIC_BIN[vr]
        n = len(raw) // struct.calcsize(code)
        vals = struct.unpack(f"<{n}{code}", raw[: n * struct.calcsize(code)])
        return vals[0] if n == 1 else (list(vals) if n else None)
    text = raw.decode("latin-1").strip("\x00 ")
    if text == "":
        return None
    parts = [p.strip("\x00 ") for p in text.split("\\")] if vr not in ("LT", "ST", "UT") else [text]
    if vr == "DS":
        vals = [float(p) for p in parts]
    elif vr == "IS":
        vals = [int(float(p)) for p in parts]
    else:
        vals = parts
    return vals[0] if len(vals) == 1 else vals


_CONVERTED: dict = {}


def _converted(tag: int, vr: bytes | None, raw: bytes):
    """``_convert`` with a cache: most values repeat across the files of a series."""
    key = (tag, vr, raw)
    try:
        return _CONVERTED[key]
    except KeyError:
        pass
    kw, dvr = _FAST_TAGS[tag]
    use_vr = vr.decode("latin-1") if vr else dvr
    value = _convert(use_vr, raw) if use_vr != "SQ" else None
    if len(_CONVERTED) > 100_000:
        _CONVERTED.clear()
    if not isinstance(value, list):  # lists are mutable: never share them
        _CONVERTED[key] = value
    return value


def _skip_undefined(buf: bytes, pos: int, explicit: bool) -> int:
    """Position after a sequence of undefined length starting at ``pos`` (its first item)."""
    end = len(buf)
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        pos += 8
        tag = (group << 16) | elem
        if tag == 0xFFFEE0DD:  # sequence delimitation
            return pos
        if tag != 0xFFFEE000:
            raise ValueError("malformed sequence")
        if length != 0xFFFFFFFF:
            pos += length
            continue
        # item of undefined length: walk its elements up to the item delimitation
        while True:
            tag, pos, vr, length, vstart = _element(buf, pos, explicit)
            if tag == 0xFFFEE00D:
                break
            if length == 0xFFFFFFFF:
                pos = _skip_undefined(buf, vstart, explicit)
            else:
                pos = vstart + length
    raise ValueError("unterminated sequence")


def _element(buf: bytes, pos: int, explicit: bool):
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = (group << 16) | elem
    if group == 0xFFFE:  # item / delimitation tags have no VR
        length = struct.unpack_from("<I", buf, pos + 4)[0]
        return tag, pos + 8, None, (0 if tag in (0xFFFEE00D, 0xFFFEE0DD) else length), pos + 8
    if explicit:
        vr = buf[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", buf, pos + 8)[0]
            return tag, pos + 12, vr, length, pos + 12
        length = struct.unpack_from("<H", buf, pos + 6)[0]
        return tag, pos + 8, vr, length, pos + 8
    length = struct.unpack_from("<I", buf, pos + 4)[0]
    return tag, pos + 8, None, length, pos + 8


class FastHeader:
    """Header values of one DICOM file, read without pydicom; ``get`` mimics ``pydicom.Dataset.get``."""

    __slots__ = ("filename", "values", "elems", "header", "pixel_offset", "pixel_length", "pixel_bytes",
                 "transfer_syntax", "media_sop_class", "_full", "_tags", "per_slice")

    def __init__(self, filename):
        self.filename = str(filename)
        self.values: dict = {}
        self.elems: list = []  # (tag, value start, value end) of each top-level element, offsets into header
        self.header = b""
        self.pixel_bytes = None
        self._tags: set = set()  # which of _PRESENCE occur
        self.per_slice: list = []  # (element start, value end) of the _PER_SLICE elements
        self.pixel_offset = None
        self.pixel_length = None
        self.transfer_syntax = None
        self.media_sop_class = None
        self._full = None

    # -- the pydicom-like interface the loader uses --------------------------------------
    def get(self, key, default=None):
        if isinstance(key, str):
            if key in self.values:
                v = self.values[key]
                return default if v is None else v
            if key in _FAST_KW_SET:
                return default
            if key == "PixelData":
                return default if self.pixel_offset is None else b""
        return self.full().get(key, default)

    def __getattr__(self, key):
        if key.startswith("_") or key in FastHeader.__slots__:
            raise AttributeError(key)
        v = self.get(key)
        if v is None:
            raise AttributeError(f"{self.filename} has no {key}")
        return v

    def __contains__(self, key) -> bool:
        if key == "PixelData":
            return self.pixel_offset is not None
        if isinstance(key, str):
            tag = tag_for_keyword(key)
            if tag is None:
                return False
            if tag in _PRESENCE:
                return tag in self._tags
            return any(t == tag for t, _, _ in self.elems)
        return key in self.full()

    def __getitem__(self, key):
        return self.full()[key]

    def full(self) -> pydicom.Dataset:
        """The whole header parsed by pydicom (cached)."""
        if self._full is None:
            try:
                ds = pydicom.dcmread(self.filename, stop_before_pixels=True)
                ds.get("RadiopharmaceuticalInformationSequence")  # force parsing of the usual suspects now
            except Exception as exc:  # pydicom raises many kinds on a corrupt file
                from ..errors import DicomError

                raise DicomError(f"{self.filename}: header cannot be parsed ({type(exc).__name__}: {exc}); "
                                 "fix or remove the file") from None
            self._full = ds
        return self._full

    def charset(self) -> str:
        """SpecificCharacterSet (0008,0005) as stored ('' when absent); text here is decoded as Latin-1."""
        for t, a, b in self.elems:
            if t == 0x00080005:
                return self.header[a:b].decode("latin-1").strip("\x00 ")
            if t > 0x00080005:
                break
        return ""

    def content_key(self) -> bytes:
        """The header bytes without the per-slice bookkeeping elements (groups files by content)."""
        h = self.header
        parts, prev = [], 0
        for a, b in self.per_slice:
            parts.append(h[prev:a])
            prev = b
        parts.append(h[prev:])
        return b"".join(parts)

    def pixels(self) -> np.ndarray:
        """The stored pixel values, shape (rows, cols) or (frames, rows, cols)."""
        rows, cols = int(self.values["Rows"]), int(self.values["Columns"])
        frames = int(self.values.get("NumberOfFrames") or 1)
        dtype = _pixel_dtype(int(self.values["BitsAllocated"]), int(self.values.get("PixelRepresentation") or 0))
        count = rows * cols * frames
        if count * dtype.itemsize > self.pixel_length:
            raise ValueError(f"pixel data has {self.pixel_length} bytes, expected {count * dtype.itemsize}")
        if self.pixel_bytes is not None:
            arr = np.frombuffer(self.pixel_bytes, dtype=dtype, count=count)
        else:
            arr = np.fromfile(self.filename, dtype=dtype, count=count, offset=self.pixel_offset)
        if arr.size != count:
            raise ValueError(f"pixel data truncated: {arr.size} of {count} values")
        return arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


_FAST_KW_SET = frozenset(FAST_KEYWORDS)


@lru_cache(maxsize=8)
def _pixel_dtype(bits: int, signed: int) -> np.dtype:
    kind = "i" if signed else "u"
    return np.dtype(f"<{kind}{bits // 8}")


_SHORT = struct.Struct("<HH2sH")
_IMPL = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_INITIAL_READ = 1 << 17


def read_fast(path: str | Path) -> FastHeader | None:
    """Parse ``path`` if it is a plain uncompressed Little Endian DICOM file, else return None.

    Raises nothing for non-DICOM or unusual files: None means "use pydicom".
    """
    try:
        with open(path, "rb") as f:
            buf = f.read(_INITIAL_READ)
            if len(buf) < 132 or buf[128:132] != b"DICM":
                return None
            hdr = FastHeader(path)
            pos = 132
            # file meta (explicit VR little endian)
            while pos + 8 <= len(buf):
                if buf[pos:pos + 2] != b"\x02\x00":
                    break
                tag, pos, vr, length, vstart = _element(buf, pos, True)
                value = buf[vstart:vstart + length]
                if tag == 0x00020010:
                    hdr.transfer_syntax = value.decode("latin-1").strip("\x00 ")
                elif tag == 0x00020002:
                    hdr.media_sop_class = value.decode("latin-1").strip("\x00 ")
                pos = vstart + length
            if hdr.transfer_syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
                return None
            explicit = hdr.transfer_syntax == _EXPLICIT_LE
            hdr.per_slice.append((0, pos))  # preamble and file meta (MediaStorageSOPInstanceUID) are per file
            elems = hdr.elems
            values = hdr.values
            fast = _FAST_TAGS
            n = len(buf)
            while True:
                if pos + 12 > n:
                    more = f.read(max(65536, n))
                    if not more:
                        break
                    buf += more
                    n = len(buf)
                    continue
                if explicit:
                    group, elem, vr, length = _SHORT.unpack_from(buf, pos)
                    if vr in _LONG_VRS:
                        length = _U32.unpack_from(buf, pos + 8)[0]
                        vstart = pos + 12
                    else:
                        vstart = pos + 8
                else:
                    group, elem, length = _IMPL.unpack_from(buf, pos)
                    vr = None
                    vstart = pos + 8
                tag = (group << 16) | elem
                if tag == _PIXEL_DATA:
                    if length == 0xFFFFFFFF:
                        return None  # encapsulated (compressed)
                    hdr.pixel_offset = vstart
                    hdr.pixel_length = length
                    if vstart + length <= n:
                        hdr.pixel_bytes = buf[vstart:vstart + length]
                    break
                if length == 0xFFFFFFFF:
                    while True:
                        try:
                            end = _skip_undefined(buf, vstart, explicit)
                            break
                        except (ValueError, struct.error):
                            more = f.read(max(65536, n))
                            if not more:
                                return None
                            buf += more
                            n = len(buf)
                else:
                    end = vstart + length
                    while end > n:
                        more = f.read(max(65536, end - n))
                        if not more:
                            return None
                        buf += more
                        n = len(buf)
                elems.append((tag, vstart, end))
                if tag in _PRESENCE:
                    hdr._tags.add(tag)
                elif tag in _PER_SLICE:
                    hdr.per_slice.append((pos, end))
                spec = fast.get(tag)
                if spec is not None:
                    values[spec[0]] = _converted(tag, vr, buf[vstart:end])
                pos = end
            hdr.header = buf[:pos]
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None
    if not {c.strip() for c in hdr.charset().split("\\")} <= {"", "ISO_IR 6", "ISO_IR 100", "ISO 2022 IR 6",
                                                              "ISO 2022 IR 100"}:
        return None  # text in other character sets is decoded by pydicom
    if "Rows" in values and hdr.pixel_offset is not None:
        bits, stored = values.get("BitsAllocated"), values.get("BitsStored")
        if bits not in (8, 16, 32) or (values.get("PixelRepresentation") and stored != bits) \
                or int(values.get("SamplesPerPixel") or 1) != 1:
            return None  # unusual pixel layouts go to pydicom
    return hdr
