"""One canonical spelling of user ids: the lowercase, hyphenated UUID (`str(uuid.UUID(...))`).

Every route and socket event that takes a user id from a client normalises it here first, so that
comparisons ("cannot invite yourself", "cannot introduce yourself"), Redis keys and Lua guards see
one spelling only. Accepted spellings: any case, with or without hyphens, in braces, or as a
`urn:uuid:` URN. Anything else is not a user id (None). Stricter than `uuid.UUID()`, which also
takes e.g. underscores or a sign inside the hex digits.
"""

from __future__ import annotations

import re
from uuid import UUID

_SPELLINGS = re.compile(
    r"(?:urn:uuid:)?(\{)?([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})(?(1)\})",
    re.IGNORECASE)
MAX_LENGTH = 64  # longer input is refused before the regex runs


def canonical_user_id(value: object) -> str | None:
    """'3F2504E0-4F89-11D3-9A0C-0305E82C3301', 'urn:uuid:3f25…', '{3f25…}' or '3f2504e04f8911d3…'
    -> '3f2504e0-4f89-11d3-9a0c-0305e82c3301'; None if `value` is not a user id."""
    if not isinstance(value, str) or len(value) > MAX_LENGTH:
        return None
    m = _SPELLINGS.fullmatch(value.strip())
    return "-".join(m.group(2, 3, 4, 5, 6)).lower() if m else None


def user_uuid(value: object) -> UUID | None:
    canonical = canonical_user_id(value)
    return UUID(canonical) if canonical else None
