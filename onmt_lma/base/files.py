"""File helpers shared by the commands and data preparation."""

import hashlib


def sha256_of(path):
    """Hex sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
