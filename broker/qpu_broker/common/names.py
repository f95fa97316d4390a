"""Token names: one canonical form, so two names that look the same are the same name.

Names are NFC-normalised on the way in (create, rename) and on every lookup,
so "café" typed as e + U+0301 (NFD, as some keyboards and macOS file names do)
finds the token created as U+00E9 (NFC). Comparison stays case-sensitive.
"""

from __future__ import annotations

import unicodedata


def canonical_name(name: str) -> str:
    return unicodedata.normalize("NFC", name)
