"""File types decided by magic bytes, never by the client's MIME type or filename (PROTOCOL.md §6 D21).

Only the formats the client produces are recognised: selfies JPEG, PNG, WebP; videos WebM (EBML
DocType "webm"), MP4 (ISO BMFF with an MP4 brand) and QuickTime. Anything else, SVG and HTML
included, is not a media type at all.
"""

from __future__ import annotations

from dataclasses import dataclass

SNIFF_BYTES = 4096  # enough for an EBML header or an ftyp box with its compatible brands


@dataclass(frozen=True)
class MediaType:
    mime: str
    ext: str


JPEG = MediaType("image/jpeg", "jpg")
PNG = MediaType("image/png", "png")
WEBP = MediaType("image/webp", "webp")
WEBM = MediaType("video/webm", "webm")
MP4 = MediaType("video/mp4", "mp4")
QUICKTIME = MediaType("video/quicktime", "mov")
ALL = (JPEG, PNG, WEBP, WEBM, MP4, QUICKTIME)
BY_MIME = {t.mime: t for t in ALL}
BY_EXT = {t.ext: t for t in ALL}

# ISO BMFF brands of MP4 video (phones, browsers, encoders). Image brands (heic, avif, mif1) are absent.
MP4_BRANDS = frozenset(
    b.encode() for b in (
        "isom", "iso2", "iso3", "iso4", "iso5", "iso6", "iso7", "iso8", "iso9", "mp41", "mp42", "mp71",
        "avc1", "dash", "cmfc", "M4V ", "M4VH", "M4VP", "mmp4", "MSNV", "3gp4", "3gp5", "3gp6", "3g2a",
        "3ge6", "f4v ", "XAVC", "MP4 ",
    )
)
QT_BRAND = b"qt  "
# Top-level atoms a QuickTime file without an ftyp box may start with.
QT_LEGACY_ATOMS = frozenset((b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"))


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, next position), or None if malformed."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(data):
        return None
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    return value, pos + length


def _ebml_doctype(head: bytes) -> bytes | None:
    """The DocType of an EBML header (b"webm", b"matroska"), or None."""
    if head[:4] != b"\x1a\x45\xdf\xa3":
        return None
    size = _vint(head, 4, keep_marker=False)
    if size is None:
        return None
    header_size, pos = size
    end = min(len(head), pos + header_size)
    while pos < end:
        elem = _vint(head, pos, keep_marker=True)
        if elem is None:
            return None
        elem_id, pos = elem
        length = _vint(head, pos, keep_marker=False)
        if length is None:
            return None
        elem_len, pos = length
        if elem_id == 0x4282:  # DocType
            return head[pos:pos + elem_len].rstrip(b"\x00")
        pos += elem_len
    return None


def _iso_bmff(head: bytes) -> MediaType | None:
    if len(head) < 12:
        return None
    box_size = int.from_bytes(head[0:4], "big")
    box_type = head[4:8]
    if box_type == b"ftyp":
        major = head[8:12]
        compatible = [head[i:i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)]
        if major == QT_BRAND:
            return QUICKTIME
        if major in MP4_BRANDS or any(b in MP4_BRANDS for b in compatible):
            return MP4
        if QT_BRAND in compatible:
            return QUICKTIME
        return None
    if box_type in QT_LEGACY_ATOMS and (box_size >= 8 or box_size in (0, 1)):
        return QUICKTIME
    return None


def sniff(head: bytes) -> MediaType | None:
    """The media type the first bytes of a file prove, or None."""
    if head[:3] == b"\xff\xd8\xff":
        return JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return WEBM if _ebml_doctype(head[:SNIFF_BYTES]) == b"webm" else None
    return _iso_bmff(head[:SNIFF_BYTES])
