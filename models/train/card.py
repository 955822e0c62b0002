"""Attach a document (the model card) to a bundle directory, covered by its SHA256SUMS.

The loader refuses any file SHA256SUMS does not list, and verifies every file it lists; listing the
card makes it part of the bundle's identity (``Bundle.sha256``): a card edited after the fact is a
different bundle, and a card that does not match its weights cannot be swapped in unnoticed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from models.bundle import SUMS_FILE, load_bundle

CARD_FILE = "MODEL_CARD.md"
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def attach_file(bundle_dir: Path, name: str, data: bytes) -> str:
    """Write ``name`` into the bundle, rewrite SHA256SUMS (sorted, sha256sum text form), return the new sha."""
    if not _NAME.match(name) or name == SUMS_FILE:
        raise ValueError(f"not a plain bundle file name: {name!r}")
    load_bundle(bundle_dir)  # only ever extend a bundle that verifies now
    (bundle_dir / name).write_bytes(data)
    names = sorted(p.name for p in bundle_dir.iterdir() if p.is_file() and p.name != SUMS_FILE)
    lines = "".join(f"{hashlib.sha256((bundle_dir / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    (bundle_dir / SUMS_FILE).write_text(lines)
    return load_bundle(bundle_dir).sha256
