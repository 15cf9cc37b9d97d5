"""Tell model file formats apart by their bytes, without unpickling anything.

The extension is not trusted (``.pt`` is used for TorchScript, state dicts and pickled
modules alike), and unpickling to find out would run the file's code; so this module reads
only zip member names and magic bytes.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from audit.errors import ModelError

TORCHSCRIPT = "torchscript"
EXPORT = "export"
#: anything written by ``torch.save``: a state dict, a checkpoint or a pickled module;
#: which one is decided by loading it with ``weights_only=True``
TORCH_SAVE = "torch_save"
SAFETENSORS = "safetensors"

EXPECTED_FORMATS = (
    "a TorchScript file (torch.jit.save), a torch.export program (torch.export.save, .pt2), "
    "a state dict (torch.save(model.state_dict())) or a .safetensors file"
)

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Pickle protocol 2+ opens with the PROTO opcode; torch.save's pre-1.6 format is a pickle.
_PICKLE_PROTO = 0x80
# safetensors: an 8-byte little-endian header length, then a JSON header starting with "{".
_SAFETENSORS_MAX_HEADER = 100_000_000


def sniff_format(path: Path) -> str:
    """Return one of the format constants above, or raise ModelError naming ``path``."""
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"model file {path} is empty; expected {EXPECTED_FORMATS}")
    with path.open("rb") as handle:
        head = handle.read(9)
    if head[:4] in _ZIP_MAGIC:
        return _zip_format(path)
    if _looks_like_safetensors(path, head, size):
        return SAFETENSORS
    if head[0] == _PICKLE_PROTO:
        return TORCH_SAVE
    raise ModelError(
        f"model file {path} is not a format SegAudit recognises "
        f"(first bytes {head[:8]!r}); expected {EXPECTED_FORMATS}"
    )


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(
            f"model file {path} looks like a zip archive but cannot be read "
            f"(truncated or corrupt?): {exc}; expected {EXPECTED_FORMATS}"
        ) from exc
    # Every PyTorch archive nests its members under one top-level folder named after the
    # file at save time, which may differ from the current name.
    members = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in members or any(m.startswith("models/") for m in members):
        return EXPORT
    if "constants.pkl" in members or any(m.startswith("code/") for m in members):
        return TORCHSCRIPT
    if "data.pkl" in members:
        return TORCH_SAVE
    shown = ", ".join(sorted(names)[:8])
    raise ModelError(
        f"model file {path} is a zip archive but not a PyTorch one (members: {shown}); "
        f"expected {EXPECTED_FORMATS}"
    )


def _looks_like_safetensors(path: Path, head: bytes, size: int) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    if not 2 <= header_len <= min(size - 8, _SAFETENSORS_MAX_HEADER):
        return False
    with path.open("rb") as handle:
        handle.seek(8)
        header = handle.read(header_len)
    try:
        return isinstance(json.loads(header), dict)
    except ValueError:
        return False
