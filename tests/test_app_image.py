"""App images (orchestrator.app_image): the format, and every way a hostile zip is refused.

Images are real zips made here with zipfile; the packages are real Wasm modules assembled
from WAT with wasmtime, so exports and imports are checked against the real thing. Archives
zipfile will not write (NUL in a name, an encrypted flag, lying sizes) are made by patching
the bytes of a real zip.
"""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
import zlib
from typing import Any

import msgspec
import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.app_build import zip_entries
from orchestrator.app_image import (
    AppImage,
    ImageError,
    ImageLimits,
    image_digest,
    read_image,
)

CONVERT_WAT = """
(module
  (func (export "c2f") (param i64) (result i64)
    (i64.add (i64.div_s (i64.mul (local.get 0) (i64.const 9)) (i64.const 5)) (i64.const 32))))
"""
# Imports a host function besides WASI: its package must say `"requires": ["sensor_read"]`.
THRESHOLD_WAT = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
  (import "env" "sensor_read" (func (result i64)))
  (func (export "check") (param i64) (result i64)
    (i64.extend_i32_u (i64.gt_s (local.get 0) (i64.const 100)))))
"""
CONVERT_WASM = bytes(wasmtime.wat2wasm(CONVERT_WAT))
THRESHOLD_WASM = bytes(wasmtime.wat2wasm(THRESHOLD_WAT))

INT_FN: dict[str, Any] = {
    "method": "GET",
    "parameters": [{"name": "x", "type": "integer"}],
    "output": "integer",
}


def application(**over: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "name": "thermo",
        "version": "1.0.0",
        "pipelines": [
            {
                "name": "main",
                "sequence": [
                    {"module": "convert", "func": "c2f"},
                    {"module": "threshold", "func": "check"},
                ],
                "limits": {"convert.c2f": {"timeoutMs": 1000}},
            },
            {"name": "convert-only", "sequence": [{"module": "convert", "func": "c2f"}]},
        ],
        "packages": ["convert", "threshold"],
    } | over


def convert_package(**over: Any) -> dict[str, Any]:
    return {"name": "convert", "version": "1.0.0", "functions": {"c2f": INT_FN}} | over


def threshold_package(**over: Any) -> dict[str, Any]:
    check = INT_FN | {
        "mounts": [{"name": "limit.txt", "mediaType": "text/plain", "stage": "deployment"}]
    }
    return {
        "name": "threshold",
        "version": "2.0.0",
        "functions": {"check": check},
        "requires": ["sensor_read"],
        "files": ["limit.txt"],
    } | over


def js(doc: Any) -> bytes:
    return msgspec.json.encode(doc)


def tree() -> dict[str, bytes]:
    """A valid app's files by image path."""
    return {
        "application.json": js(application()),
        "pkg-convert/package.json": js(convert_package()),
        "pkg-convert/package.wasm": CONVERT_WASM,
        "pkg-threshold/package.json": js(threshold_package()),
        "pkg-threshold/package.wasm": THRESHOLD_WASM,
        "pkg-threshold/limit.txt": b"100\n",
        "static/static.json": js({"name": "thermo", "index": "index.html"}),
        "static/index.html": b"<h1>thermo</h1>",
        "static/css/site.css": b"h1 { color: red }",
    }


def with_files(changes: dict[str, bytes | None]) -> dict[str, bytes]:
    """The valid tree with ``changes`` applied: a path to new bytes, or to None to remove it."""
    files = tree()
    for path, body in changes.items():
        if body is None:
            files.pop(path, None)
        else:
            files[path] = body
    return files


def image(changes: dict[str, bytes | None] | None = None) -> bytes:
    return zip_entries(with_files(changes or {}))


def refused(data: bytes, limits: ImageLimits | None = None, **kw: Any) -> ImageError:
    with pytest.raises(ImageError) as caught:
        read_image(data, limits or ImageLimits(), **kw)
    return caught.value


def raw_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: we want them
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for info, body in entries:
                archive.writestr(info, body)
    return buffer.getvalue()


def valid_plus(name: str, body: bytes = b"x") -> bytes:
    """The valid app with one more entry whose name is ``name`` (any string zipfile writes)."""
    return raw_zip([*tree().items(), (name, body)])


def central_records(data: bytes) -> list[int]:
    """Offsets of the central directory file headers."""
    offsets, at = [], data.find(b"PK\x01\x02")
    while at != -1:
        offsets.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return offsets


def patch_central(data: bytes, name: bytes, **fields: int) -> bytes:
    """Overwrite header fields (flags, method, crc, usize) of entry ``name`` in the directory."""
    layout = {
        "needs": (6, "<H"),  # version needed to extract
        "flags": (8, "<H"),
        "method": (10, "<H"),
        "crc": (16, "<I"),
        "usize": (24, "<I"),
    }
    out = bytearray(data)
    for at in central_records(data):
        (name_len,) = struct.unpack_from("<H", data, at + 28)
        if data[at + 46 : at + 46 + name_len] == name:
            for field, value in fields.items():
                offset, fmt = layout[field]
                struct.pack_into(fmt, out, at + offset, value)
            return bytes(out)
    raise AssertionError(f"no entry {name!r}")


def rename_raw(data: bytes, old: bytes, new: bytes) -> bytes:
    """Rename an entry in both headers to bytes zipfile would never write (same length)."""
    assert len(old) == len(new) and data.count(old) == 2
    return data.replace(old, new)


# --- the valid image ---------------------------------------------------------------------------


def test_valid_image_reads_back_everything() -> None:
    data = image()
    img = read_image(data)
    assert isinstance(img, AppImage)
    assert img.digest == image_digest(data) and img.digest.startswith("sha256:")
    assert img.size == len(data)
    assert img.app.name == "thermo" and img.app.version == "1.0.0"
    assert set(img.packages) == {"convert", "threshold"}
    conv, thr = img.packages["convert"], img.packages["threshold"]
    assert conv.folder == "pkg-convert" and conv.wasm == CONVERT_WASM
    assert conv.exports == {"c2f": 1} and conv.imports == []
    assert thr.imports == [("wasi_snapshot_preview1", "proc_exit"), ("env", "sensor_read")]
    assert thr.files == {"limit.txt": b"100\n"}
    assert thr.functions["check"].mounts_at("deployment")[0].name == "limit.txt"
    assert img.static is not None
    assert img.static.files == {
        "index.html": b"<h1>thermo</h1>",
        "css/site.css": b"h1 { color: red }",
    }
    assert img.pipeline(None).name == "main"
    assert [s.func for s in img.pipeline("convert-only").sequence] == ["c2f"]
    assert img.pipeline("main").limits["convert.c2f"].timeoutMs == 1000


def test_unknown_pipeline_names_the_field() -> None:
    with pytest.raises(ImageError) as caught:
        read_image(image()).pipeline("nope")
    assert caught.value.field == "pipeline" and "convert-only" in caught.value.message


def test_directory_entries_are_ignored_and_static_is_optional() -> None:
    files = with_files(
        {"static/static.json": None, "static/index.html": None, "static/css/site.css": None}
    )
    data = raw_zip([("pkg-convert/", b""), *files.items()])
    img = read_image(data)
    assert img.static is None and set(img.packages) == {"convert", "threshold"}


def test_static_json_defaults_to_the_app_name_and_index_html() -> None:
    img = read_image(image({"static/static.json": None}))
    assert img.static is not None
    assert (img.static.name, img.static.index) == ("thermo", "index.html")


def test_static_index_must_exist() -> None:
    err = refused(image({"static/index.html": None}))
    assert (err.status, err.field) == (422, "static/static.json.index")


# --- not a zip, too big ------------------------------------------------------------------------


def test_not_a_zip_is_400() -> None:
    err = refused(b"this is not a zip file at all")
    assert (err.status, err.field) == (400, "image")


def test_truncated_zip_is_400() -> None:
    data = image()
    assert refused(data[: len(data) // 2]).status == 400


def test_crc_error_is_400() -> None:
    data = patch_central(image(), b"pkg-threshold/limit.txt", crc=0xDEADBEEF)
    err = refused(data)
    assert (err.status, err.field) == (400, "pkg-threshold/limit.txt")


def test_image_over_the_size_limit_is_413() -> None:
    data = image()
    err = refused(data, ImageLimits(max_image_bytes=len(data) - 1))
    assert (err.status, err.field) == (413, "image")
    read_image(data, ImageLimits(max_image_bytes=len(data)))  # the limit itself is allowed


def test_too_many_entries_is_413() -> None:
    data = image()
    err = refused(data, ImageLimits(max_entries=len(tree()) - 1))
    assert (err.status, err.field) == (413, "image")


def test_a_huge_central_directory_is_413_before_zipfile_parses_it() -> None:
    # More than 65535 records: the zip64 end record holds the count.
    data = raw_zip([(f"static/f{i}", b"") for i in range(70_000)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zipfile, "ZipFile", None)  # proves zipfile never got to parse it
        err = refused(data)
    assert (err.status, err.field) == (413, "image") and "70000 entries" in err.message


def test_a_lying_entry_total_does_not_hide_records() -> None:
    data = bytearray(image())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 1, 1)  # "1 entry" on this disk and in total
    err = refused(bytes(data), ImageLimits(max_entries=len(tree()) - 1))
    assert (err.status, err.field) == (413, "image")


# --- hostile entry names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", "'..'"),
        ("pkg-convert/../../x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:x", "absolute"),
        ("\\\\server\\share", "backslash"),
        ("pkg-convert\\package.json", "backslash"),
        ("a//b", "empty segment"),
        ("./a", "empty segment"),
        ("a\x01b", "control character"),
        ("a\x7fb", "control character"),
    ],
)
def test_hostile_entry_names_are_refused(name: str, why: str) -> None:
    err = refused(valid_plus(name))
    assert err.status == 422
    assert why in err.message
    assert err.field  # names the entry (escaped when it holds control characters)


def test_nul_in_an_entry_name_is_refused() -> None:
    data = rename_raw(valid_plus("aXb"), b"aXb", b"a\x00b")
    err = refused(data)
    assert err.status == 422 and "control" in err.message and err.field == "a\\x00b"


def test_non_utf8_entry_name_is_refused() -> None:
    data = rename_raw(valid_plus("aXb"), b"aXb", b"a\xffb")
    err = refused(data)
    assert err.status == 422 and "UTF-8" in err.message


def test_entry_flagged_utf8_that_is_not_is_refused() -> None:
    data = rename_raw(valid_plus("a\u00e9b"), "a\u00e9b".encode(), b"a\xff\xfeb")
    err = refused(data)
    assert (err.status, err.field) == (422, "image") and "UTF-8" in err.message


def test_duplicate_entry_names_are_refused() -> None:
    data = raw_zip([*tree().items(), ("pkg-threshold/limit.txt", b"999\n")])
    err = refused(data)
    assert (err.status, err.field) == (422, "pkg-threshold/limit.txt")
    assert "twice" in err.message


def test_symlink_entry_is_refused() -> None:
    link = zipfile.ZipInfo("pkg-threshold/limit.txt")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    files = with_files({"pkg-threshold/limit.txt": None})
    err = refused(raw_zip([*files.items(), (link, b"/etc/passwd")]))
    assert (err.status, err.field) == (422, "pkg-threshold/limit.txt")
    assert "symbolic link" in err.message


def test_device_file_entry_is_refused() -> None:
    fifo = zipfile.ZipInfo("pkg-threshold/limit.txt")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    files = with_files({"pkg-threshold/limit.txt": None})
    err = refused(raw_zip([*files.items(), (fifo, b"100")]))
    assert (err.status, err.field) == (422, "pkg-threshold/limit.txt")


def test_encrypted_entry_is_refused() -> None:
    data = patch_central(image(), b"pkg-threshold/limit.txt", flags=0x1)
    err = refused(data)
    assert (err.status, err.field) == (422, "pkg-threshold/limit.txt")
    assert "encrypted" in err.message


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compression_other_than_stored_or_deflate_is_refused(method: int) -> None:
    info = zipfile.ZipInfo("pkg-threshold/limit.txt")
    info.compress_type = method
    files = with_files({"pkg-threshold/limit.txt": None})
    err = refused(raw_zip([*files.items(), (info, b"100\n")]))
    assert (err.status, err.field) == (422, "pkg-threshold/limit.txt")
    assert "compression" in err.message


def test_stored_entries_are_fine() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, body in tree().items():
            archive.writestr(name, body)
    assert read_image(buffer.getvalue()).app.name == "thermo"


# --- bombs ---------------------------------------------------------------------------------------


def test_bomb_by_ratio_is_413() -> None:
    data = valid_plus("static/zeros.bin", bytes(4 * 1024 * 1024))  # deflates ~1000-fold
    err = refused(data)
    assert (err.status, err.field) == (413, "static/zeros.bin")
    assert "fold" in err.message


def test_small_entries_may_compress_well() -> None:
    # Ratio is only checked above 1 MiB: a small file of zeros is not a bomb.
    read_image(valid_plus("static/zeros.bin", bytes(512 * 1024)))


def test_entry_over_the_entry_limit_is_413() -> None:
    data = valid_plus("static/big.bin", b"x" * 5000)
    err = refused(data, ImageLimits(max_entry_bytes=4096))
    assert (err.status, err.field) == (413, "static/big.bin")


def test_many_entries_each_under_the_limits_but_over_in_total_is_413() -> None:
    extra = [(f"static/part{i}.bin", bytes([i]) * 3000) for i in range(10)]
    data = raw_zip([*tree().items(), *extra])
    err = refused(data, ImageLimits(max_entry_bytes=4000, max_total_bytes=20_000))
    assert (err.status, err.field) == (413, "image")


def test_lying_header_sizes_do_not_get_past_the_limits() -> None:
    # Each entry says it inflates to 100 bytes (declared total well under the limit) but holds
    # 4000; reading stops at the declared size and the CRC check then fails: never 4000 bytes.
    extra = [(f"static/part{i}.bin", bytes([65 + i]) * 4000) for i in range(10)]
    data = raw_zip([*tree().items(), *extra])
    for i in range(10):
        data = patch_central(data, f"static/part{i}.bin".encode(), usize=100)
    err = refused(data, ImageLimits(max_entry_bytes=4096, max_total_bytes=20_000))
    assert err.status in {400, 413} and err.field == "static/part0.bin"


def test_header_saying_more_than_the_entry_limit_is_413_before_inflating() -> None:
    data = patch_central(image(), b"static/index.html", usize=10**9)
    err = refused(data)
    assert (err.status, err.field) == (413, "static/index.html")


# --- packages --------------------------------------------------------------------------------------


def test_folder_names_are_free_and_package_names_count() -> None:
    files = tree()
    moved = {
        (k.replace("pkg-convert/", "anything_else/") if k.startswith("pkg-convert/") else k): v
        for k, v in files.items()
    }
    img = read_image(zip_entries(moved))
    assert img.packages["convert"].folder == "anything_else"


def test_duplicate_package_names_in_two_folders_are_refused() -> None:
    err = refused(
        image(
            {
                "copy/package.json": js(convert_package(version="9.9.9")),
                "copy/package.wasm": CONVERT_WASM,
            }
        )
    )
    assert (err.status, err.field) == (422, "packages")
    assert "copy/" in err.message and "pkg-convert/" in err.message


def test_missing_package_folder_is_refused() -> None:
    err = refused(
        image(
            {
                "pkg-threshold/package.json": None,
                "pkg-threshold/package.wasm": None,
                "pkg-threshold/limit.txt": None,
            }
        )
    )
    assert (err.status, err.field) == (422, "packages") and "threshold" in err.message


def test_package_not_listed_in_application_json_is_refused() -> None:
    err = refused(image({"application.json": js(application(packages=["convert"]))}))
    assert (err.status, err.field) == (422, "packages") and "threshold" in err.message


def test_folder_without_package_json_is_refused() -> None:
    err = refused(image({"stray/readme.txt": b"hi"}))
    assert (err.status, err.field) == (422, "stray/package.json")


def test_missing_data_file_is_refused() -> None:
    err = refused(image({"pkg-threshold/limit.txt": None}))
    assert (err.status, err.field) == (422, "pkg-threshold/limit.txt")


def test_unexpected_file_in_a_package_folder_is_refused() -> None:
    err = refused(image({"pkg-convert/convert.c": b"int main;"}))
    assert (err.status, err.field) == (422, "pkg-convert/convert.c")
    assert "unexpected" in err.message


def test_nested_file_in_a_package_folder_is_refused() -> None:
    err = refused(image({"pkg-convert/sub/x.txt": b"x"}))
    assert (err.status, err.field) == (422, "pkg-convert/sub/x.txt")


def test_unexpected_file_at_the_root_is_refused() -> None:
    err = refused(image({"README.md": b"# hi"}))
    assert (err.status, err.field) == (422, "README.md")


def test_deployment_mount_must_be_a_listed_file() -> None:
    pkg = threshold_package(files=[])
    err = refused(image({"pkg-threshold/package.json": js(pkg)}))
    assert (err.status, err.field) == (422, "pkg-threshold/package.json.files")
    assert "limit.txt" in err.message


def test_missing_wasm_is_refused() -> None:
    err = refused(image({"pkg-convert/package.wasm": None}))
    assert (err.status, err.field) == (422, "pkg-convert/package.wasm")


def test_invalid_wasm_is_refused() -> None:
    err = refused(image({"pkg-convert/package.wasm": b"\0asm\x01\0\0\0garbage"}))
    assert (err.status, err.field) == (422, "pkg-convert/package.wasm")


def test_described_function_not_exported_is_refused() -> None:
    pkg = convert_package(functions={"c2f": INT_FN, "f2c": INT_FN})
    err = refused(image({"pkg-convert/package.json": js(pkg)}))
    assert (err.status, err.field) == (422, "pkg-convert/package.json.functions.f2c")
    assert "exports no such function" in err.message


def test_wrong_arity_is_refused() -> None:
    two = INT_FN | {"parameters": ["integer", "integer"]}
    err = refused(image({"pkg-convert/package.json": js(convert_package(functions={"c2f": two}))}))
    assert (err.status, err.field) == (422, "pkg-convert/package.json.functions.c2f.parameters")


def test_requires_missing_an_import_is_refused() -> None:
    err = refused(image({"pkg-threshold/package.json": js(threshold_package(requires=[]))}))
    assert (err.status, err.field) == (422, "pkg-threshold/package.json.requires")
    assert "missing (imported by package.wasm): sensor_read" in err.message


def test_requires_listing_an_extra_function_is_refused() -> None:
    pkg = threshold_package(requires=["sensor_read", "takeImage"])
    err = refused(image({"pkg-threshold/package.json": js(pkg)}))
    assert (err.status, err.field) == (422, "pkg-threshold/package.json.requires")
    assert "extra (not imported by package.wasm): takeImage" in err.message
    assert "missing" not in err.message


def test_requires_never_lists_wasi() -> None:
    pkg = threshold_package(requires=["sensor_read", "proc_exit"])
    err = refused(image({"pkg-threshold/package.json": js(pkg)}))
    assert err.field == "pkg-threshold/package.json.requires" and "proc_exit" in err.message


def test_unknown_package_json_field_is_refused() -> None:
    err = refused(image({"pkg-convert/package.json": js(convert_package(colour="red"))}))
    assert (err.status, err.field) == (422, "pkg-convert/package.json.colour")


def test_package_json_not_json_is_refused() -> None:
    err = refused(image({"pkg-convert/package.json": b"{nope"}))
    assert (err.status, err.field) == (422, "pkg-convert/package.json")


def test_unsafe_package_name_is_refused() -> None:
    err = refused(image({"pkg-convert/package.json": js(convert_package(name="../x"))}))
    assert (err.status, err.field) == (422, "pkg-convert/package.json.name")


# --- core runtime ----------------------------------------------------------------------------------


def core_image() -> bytes:
    core = {
        "name": "datalist",
        "version": "1.0.0",
        "runtime": "core",
        "functions": {
            "push": {
                "method": "POST",
                "parameters": [{"name": "item", "type": "object"}],
                "output": "integer",
            },
            "count": {"method": "GET", "parameters": [], "output": "integer"},
        },
    }
    app = application(
        name="datalist",
        pipelines=[{"name": "push", "sequence": [{"module": "datalist", "func": "push"}]}],
        packages=["datalist"],
    )
    return zip_entries({"application.json": js(app), "datalist/package.json": js(core)})


def test_core_runtime_is_refused_by_default() -> None:
    err = refused(core_image())
    assert (err.status, err.field) == (422, "datalist/package.json.runtime")
    assert "only built-in apps may use the core runtime" in err.message


def test_core_runtime_with_allow_core_takes_exports_from_the_description() -> None:
    img = read_image(core_image(), allow_core=True)
    pkg = img.packages["datalist"]
    assert pkg.wasm is None and pkg.imports == []
    assert pkg.exports == {"push": 2, "count": 0}  # an object is a (pointer, length) pair
    assert set(pkg.functions) == {"push", "count"}


def test_core_package_may_not_ship_wasm() -> None:
    data = zip_entries(
        {**dict(zipfile_entries(core_image())), "datalist/package.wasm": CONVERT_WASM}
    )
    err = refused(data, allow_core=True)
    assert (err.status, err.field) == (422, "datalist/package.wasm")


def zipfile_entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(i.filename, archive.read(i)) for i in archive.infolist()]


# --- application.json -------------------------------------------------------------------------------


def test_missing_application_json_is_refused() -> None:
    err = refused(image({"application.json": None}))
    assert (err.status, err.field) == (422, "application.json")


@pytest.mark.parametrize(
    ("app", "field"),
    [
        (application(schemaVersion=2), "application.json.schemaVersion"),
        (application(name="-bad"), "application.json.name"),
        (application(name="a/b"), "application.json.name"),
        (application(version="../1"), "application.json.version"),
        (application(pipelines=[]), "application.json.pipelines"),
        (application(extra=1), "application.json.extra"),
        ({"schemaVersion": 1, "name": "x", "version": "1"}, "application.json.pipelines"),
        (
            application(pipelines=[{"name": "p", "sequence": []}]),
            "application.json.pipelines[0].sequence",
        ),
        (
            application(
                pipelines=[
                    {"name": "p", "sequence": [{"module": "convert", "func": "c2f"}]},
                    {"name": "p", "sequence": [{"module": "convert", "func": "c2f"}]},
                ]
            ),
            "application.json.pipelines[1].name",
        ),
        (
            application(pipelines=[{"name": "p", "sequence": [{"module": "nope", "func": "c2f"}]}]),
            "application.json.pipelines[0].sequence[0].module",
        ),
        (
            application(
                pipelines=[{"name": "p", "sequence": [{"module": "convert", "func": "f2c"}]}]
            ),
            "application.json.pipelines[0].sequence[0].func",
        ),
        (
            application(
                pipelines=[
                    {
                        "name": "p",
                        "sequence": [{"module": "convert", "func": "c2f"}],
                        "limits": {"convert.c2f": {"timeoutMs": 0}},
                    }
                ]
            ),
            "application.json.pipelines[0].limits['convert.c2f'].timeoutMs",
        ),
        (
            application(
                pipelines=[
                    {
                        "name": "p",
                        "sequence": [{"module": "convert", "func": "c2f"}],
                        "limits": {"threshold.check": {"timeoutMs": 5}},
                    }
                ]
            ),
            "application.json.pipelines[0].limits['threshold.check']",
        ),
        (application(packages=["convert", "convert", "threshold"]), "application.json.packages[1]"),
    ],
)
def test_invalid_application_json_names_the_field(app: dict[str, Any], field: str) -> None:
    err = refused(image({"application.json": js(app)}))
    assert (err.status, err.field) == (422, field)


def test_errors_are_deterministic() -> None:
    # Two problems: the same one is reported every time (entries are checked in a fixed order).
    data = image({"pkg-convert/extra.txt": b"x", "pkg-threshold/extra.txt": b"y"})
    fields = {refused(data).field for _ in range(3)}
    assert fields == {"pkg-convert/extra.txt"}


def test_deflate_stream_that_is_corrupt_is_400() -> None:
    body = b"hello " * 200
    data = raw_zip([*tree().items(), ("static/a.txt", body)])
    compressed = zlib.compress(body, 9)[2:-4]
    at = data.find(compressed[:16])
    assert at > 0
    broken = data[:at] + bytes(b ^ 0xFF for b in data[at : at + 8]) + data[at + 8 :]
    err = refused(broken)
    assert (err.status, err.field) == (400, "static/a.txt")


VALID = zip_entries(tree())


def test_an_entry_needing_a_newer_zip_version_is_refused_not_a_crash() -> None:
    # Found by the property below: zipfile raises NotImplementedError for "version 8.4".
    err = refused(patch_central(VALID, b"application.json", needs=84))
    assert (err.status, err.field) == (400, "image") and "version 8.4" in err.message


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.integers(0, len(VALID))),
)
def test_any_corruption_is_an_image_error_never_a_crash(
    flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(VALID)
    for at, xor in flips:
        data[at] ^= xor
    try:
        img = read_image(bytes(data[:cut]))
    except ImageError as err:
        assert err.status in {400, 413, 422} and err.field
    else:  # a flip in a part nobody reads (or one that still makes a valid image)
        assert img.app.name


STORE = {
    "name": "store",
    "sequence": [{"module": "convert", "func": "c2f"}, {"module": "dl", "func": "push"}],
}


def test_pipelines_may_use_a_declared_built_in_package() -> None:
    pipelines = [*application()["pipelines"], STORE]
    doc = application(pipelines=pipelines, uses={"dl": "datalist@1.0.0"})
    img = read_image(image({"application.json": js(doc)}))
    assert img.app.uses == {"dl": "datalist@1.0.0"}
    assert [s.module for s in img.pipeline("store").sequence] == ["convert", "dl"]


@pytest.mark.parametrize(
    ("uses", "field"),
    [
        ({}, "application.json.pipelines[2].sequence[1].module"),  # not declared
        ({"dl": "datalist"}, "application.json.uses.dl"),  # no version
        ({"dl": "../x@1"}, "application.json.uses.dl"),
        ({"dl": "datalist@1.0.0", "convert": "x@1"}, "application.json.uses.convert"),
    ],
)
def test_undeclared_or_malformed_uses_are_refused(uses: dict[str, str], field: str) -> None:
    doc = application(pipelines=[*application()["pipelines"], STORE], uses=uses)
    err = refused(image({"application.json": js(doc)}))
    assert err.status == 422 and err.field == field, (err.field, err.message)
