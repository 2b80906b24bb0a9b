"""Safe zip reading: every regular file of an untrusted archive, in memory, within limits.

:func:`read_entries` is the one entry point. It refuses hostile archives before decompressing
anything it does not have to: names that are not safe relative UTF-8 paths (traversal,
absolute paths, drive letters, backslashes, control characters, empty segments), entries
listed twice, symbolic links and other non-regular files, encryption, compression other than
stored or deflate, and bombs (too many entries, an entry or the total over its size limit, a
suspicious compression ratio), trusting no header: sizes are checked again while inflating.
It never writes to disk. Every refusal is an :class:`ImageError` carrying the HTTP status and
the field (the entry name, or ``image`` for the archive as a whole) of the *first* problem in
the archive's order, so the same bytes always give the same error. It is CPU-bound: async
callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass

__all__ = ["ImageError", "ImageLimits", "read_entries"]

MIB = 1024 * 1024

_CHUNK = 64 * 1024
_RATIO_FLOOR = MIB  # small entries compress absurdly well (zeros) without being a threat
_DRIVE = re.compile(r"^[A-Za-z]:")
_UTF8_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1


class ImageError(ValueError):
    """An image was refused: ``field`` names the entry or JSON path, ``status`` the HTTP status."""

    def __init__(self, message: str, *, field: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what an image may expand to; exceeding any of them is a 413."""

    max_image_bytes: int = 64 * MIB
    max_entry_bytes: int = 64 * MIB
    max_total_bytes: int = 256 * MIB
    max_ratio: float = 200.0
    max_entries: int = 2000


def read_entries(data: bytes, limits: ImageLimits) -> dict[str, bytes]:
    """Every regular file of the zip ``data``, by checked name; directory entries are dropped.

    Statuses: 400 not a readable zip (corrupt, CRC error); 413 over a limit of ``limits``
    (``max_image_bytes`` is the caller's to check: ``data`` is already in memory); 422 a
    hostile entry. Names are ``/``-separated relative paths without a trailing ``/``.
    """
    # zipfile builds an object per central-directory record before we can count them: count
    # them first, so that a directory of a million tiny records is refused cheaply.
    counted = _count_records(data)
    if counted is not None and counted > limits.max_entries:
        raise ImageError(
            f"{counted} entries, more than {limits.max_entries}", field="image", status=413
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except UnicodeDecodeError as err:  # an entry flagged UTF-8 that is not
        raise ImageError("an entry name is not valid UTF-8", field="image") from err
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        ValueError,
        OSError,
        EOFError,
        struct.error,
    ) as err:
        raise ImageError(f"not a readable zip file: {err}", field="image", status=400) from err
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise ImageError(
                f"{len(infos)} entries, more than {limits.max_entries}", field="image", status=413
            )
        checked: list[tuple[str, zipfile.ZipInfo]] = []
        seen: set[str] = set()
        declared_total = 0
        for info in infos:
            name, is_dir = _entry_name(info)
            if name in seen:
                raise ImageError("entry listed twice", field=name)
            seen.add(name)
            _check_entry(info, name, is_dir, limits)
            if not is_dir:
                declared_total += info.file_size
                checked.append((name, info))
        if declared_total > limits.max_total_bytes:
            raise ImageError(
                f"entries expand to {declared_total} bytes, more than {limits.max_total_bytes}",
                field="image",
                status=413,
            )
        files: dict[str, bytes] = {}
        budget = limits.max_total_bytes
        for name, info in checked:
            files[name] = _inflate(archive, info, name, limits, budget)
            budget -= len(files[name])
        return files


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory
_LOCATOR64 = struct.Struct("<4sLQL")  # zip64 end of central directory locator


def _count_records(data: bytes) -> int | None:
    """Central-directory records, counted without parsing them; None if there is no directory.

    Both the declared total and the record signatures in the directory's byte range count,
    so neither a lying total nor a lying size lets more records through unparsed.
    """
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
    if at < 0 or at + _EOCD.size > len(data):
        return None
    _, _, _, _, total, size, offset, _ = _EOCD.unpack_from(data, at)
    locator = at - _LOCATOR64.size
    if locator >= 0 and data[locator : locator + 4] == b"PK\x06\x07":
        _, _, record, _ = _LOCATOR64.unpack_from(data, locator)
        if record + _EOCD64.size <= len(data) and data[record : record + 4] == b"PK\x06\x06":
            fields = _EOCD64.unpack_from(data, record)
            total, size, offset = int(fields[-3]), int(fields[-2]), int(fields[-1])
    region = data[offset : offset + size] if offset < len(data) else b""
    return max(int(total), region.count(b"PK\x01\x02"))


def _entry_name(info: zipfile.ZipInfo) -> tuple[str, bool]:
    """The entry's name, checked to be a safe relative path, and whether it is a directory."""
    raw = info.orig_filename  # before zipfile truncates at NUL
    if not info.flag_bits & _UTF8_FLAG:
        # Without the flag zipfile decoded cp437; many tools write UTF-8 anyway.
        try:
            raw = raw.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError) as err:
            shown = raw.encode("cp437", "replace").decode("utf-8", "backslashreplace")
            raise ImageError("entry name is not valid UTF-8", field=shown) from err
    shown = raw.encode("unicode_escape").decode("ascii") if _has_control(raw) else raw
    if not raw:
        raise ImageError("empty entry name", field="image")
    if _has_control(raw):
        raise ImageError("entry name holds a control character", field=shown)
    if "\\" in raw:
        raise ImageError("entry name holds a backslash", field=shown)
    if raw.startswith("/") or _DRIVE.match(raw):
        raise ImageError("absolute entry name", field=shown)
    is_dir = raw.endswith("/")
    name = raw[:-1] if is_dir else raw
    for segment in name.split("/"):
        if segment in {"", "."}:
            raise ImageError("entry name has an empty segment", field=shown)
        if segment == "..":
            raise ImageError("entry name climbs out with '..'", field=shown)
    return name, is_dir


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def _check_entry(info: zipfile.ZipInfo, name: str, is_dir: bool, limits: ImageLimits) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ImageError("symbolic links are not allowed", field=name)
    kind = stat.S_IFMT(mode)
    # Many writers (Python's zipfile included) store permission bits without a file type.
    if kind and kind != (stat.S_IFDIR if is_dir else stat.S_IFREG):
        raise ImageError("only regular files and directories are allowed", field=name)
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise ImageError("encrypted entries are not allowed", field=name)
    if info.compress_type not in {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}:
        raise ImageError(
            f"compression method {info.compress_type} is not allowed (use stored or deflate)",
            field=name,
        )
    if is_dir and info.file_size:
        raise ImageError("a directory entry holds data", field=name)
    if info.file_size > limits.max_entry_bytes:
        raise ImageError(
            f"entry expands to {info.file_size} bytes, more than {limits.max_entry_bytes}",
            field=name,
            status=413,
        )
    _check_ratio(info.file_size, info.compress_size, name, limits)


def _check_ratio(size: int, compressed: int, name: str, limits: ImageLimits) -> None:
    if size > _RATIO_FLOOR and size > limits.max_ratio * max(compressed, 1):
        raise ImageError(
            f"entry expands {size / max(compressed, 1):.0f}-fold, more than {limits.max_ratio:g}",
            field=name,
            status=413,
        )


def _inflate(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: ImageLimits, budget: int
) -> bytes:
    """Decompress one entry, stopping as soon as it passes a limit (header sizes may lie)."""
    cap = min(limits.max_entry_bytes, budget)
    out = bytearray()
    try:
        with archive.open(info) as stream:
            # Bounded: every round adds a chunk or ends, and we stop once past ``cap``.
            while chunk := stream.read(_CHUNK):
                out += chunk
                if len(out) > cap:
                    raise ImageError(f"entry expands past {cap} bytes", field=name, status=413)
                _check_ratio(len(out), info.compress_size, name, limits)
    except ImageError:
        raise
    except NotImplementedError as err:  # e.g. "zip file version 8.4" needed to extract it
        raise ImageError(f"unsupported zip feature: {err}", field=name) from err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error) as err:
        raise ImageError(f"cannot read entry: {err}", field=name, status=400) from err
    return bytes(out)
