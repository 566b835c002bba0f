"""What each kind of media may be, and where it lives in the bucket.

Layout: `users/<userId>/selfie-<ts>.<ext>` and `users/<userId>/intro-<ts>.<ext>` (ts = epoch ms).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from uuid import UUID

from server.media.sniff import JPEG, MP4, PNG, QUICKTIME, WEBM, WEBP, MediaType

MB = 1024 * 1024


@dataclass(frozen=True)
class Kind:
    name: str  # "selfie" | "video": the multipart field and the API's `kind`
    stem: str  # file name stem in the key
    column: str  # users column holding the current key
    url_field: str  # response field
    max_bytes: int
    types: tuple[MediaType, ...]

    @property
    def mimes(self) -> list[str]:
        return [t.mime for t in self.types]

    def accepts(self, media: MediaType | None) -> bool:
        return media is not None and media in self.types


SELFIE = Kind("selfie", "selfie", "selfie_key", "selfieUrl", 10 * MB, (JPEG, PNG, WEBP))
VIDEO = Kind("video", "intro", "video_key", "videoUrl", 50 * MB, (WEBM, MP4, QUICKTIME))
KINDS = {k.name: k for k in (SELFIE, VIDEO)}

_KEY = re.compile(
    r"^users/(?P<user>[0-9a-f-]{36})/(?P<stem>selfie|intro)-(?P<ts>\d{13})\.(?P<ext>[a-z0-9]{2,5})$")


def user_prefix(user_id: UUID) -> str:
    return f"users/{user_id}/"


def new_key(user_id: UUID, kind: Kind, media: MediaType, now_ms: int | None = None) -> str:
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{user_prefix(user_id)}{kind.stem}-{ts}.{media.ext}"


@dataclass(frozen=True)
class ParsedKey:
    user_id: str
    stem: str
    ts_ms: int
    ext: str


def parse_key(key: str) -> ParsedKey | None:
    m = _KEY.match(key)
    if m is None:
        return None
    return ParsedKey(m["user"], m["stem"], int(m["ts"]), m["ext"])


def base_mime(content_type: str) -> str:
    """`video/webm;codecs=vp9` -> `video/webm`."""
    return content_type.split(";", 1)[0].strip().lower()
