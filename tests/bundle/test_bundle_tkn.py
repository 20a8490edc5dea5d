"""tkn's bundle format, byte for byte, against the independent builder in tests/registry.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from typing import Any

import pytest

from step_tracer.bundle import tkn
from tests.registry import go_gzip, go_tar, tkn_bundle, tkn_object


def task(name: str, script: str = "echo hi") -> dict[str, Any]:
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "Task",
        "metadata": {"name": name},
        "spec": {"steps": [{"name": "s", "image": "alpine", "script": script}]},
    }


def objects(*resources: dict[str, Any]) -> list[tkn.BundleObject]:
    return [
        tkn.BundleObject(r["apiVersion"].split("/")[-1], r["kind"].lower(), r["metadata"]["name"], tkn_object(r))
        for r in resources
    ]


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 5000])
@pytest.mark.parametrize("name", ["t", "build-and-push", "x" * 100])
def test_tar_entry_is_go_archive_tar_for_tkn_header(name: str, size: int) -> None:
    content = bytes(range(256)) * (size // 256) + b"a" * (size % 256)
    assert tkn.tar_entry(name, content) == go_tar(name, content)


def test_tar_entry_has_exactly_the_go_header_fields() -> None:
    data = tkn.tar_entry("build", b"{}")
    header = data[:512]
    assert header[0:6] == b"build\0"
    assert header[100:108] == b"0000600\0"  # mode 0600
    assert header[108:124] == b"0000000\0" * 2  # uid, gid 0
    assert header[124:136] == b"00000000002\0"
    assert header[136:148] == b"00000000000\0"  # mtime 0 (Go's zero ModTime)
    assert header[156:157] == b"0"
    assert header[257:265] == b"ustar\x0000"
    assert header[265:329] == b"\0" * 64  # no user or group names
    assert header[329:345] == b"0000000\0" * 2
    checksum = sum(header[:148]) + 8 * 32 + sum(header[156:])
    assert header[148:156] == f"{checksum:06o}".encode() + b"\0 "
    assert len(data) == 512 + 512 + 1024  # no padding to tar's 10 KiB record, unlike GNU or Python tar


def test_long_names_get_a_go_pax_header() -> None:
    name = "a-very-long-task-name-" + "x" * 120  # valid as a Kubernetes name (<= 253), too long for USTAR
    data = tkn.tar_entry(name, b"{}")
    pax, body = data[:512], data[512:1024]
    assert pax[156:157] == b"x"
    assert pax[:100] == (b"PaxHeaders.0/" + name.encode())[:100]  # Go truncates the record's name to 100 bytes
    assert pax[100:108] == b"0000000\0"  # Go writes PAX records with mode 0
    assert pax[329:345] == b"\0" * 16  # and no device numbers
    record = f"path={name}\n"
    size = len(record) + 4
    assert body.startswith(f"{size} {record}".encode())
    main = data[1024:1536]
    assert main[:100] == b"\0" * 100  # Go leaves the name empty when it does not fit
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        (member,) = archive.getmembers()
        assert member.name == name
        assert member.mode == 0o600
        extracted = archive.extractfile(member)
        assert extracted is not None and extracted.read() == b"{}"


def test_names_with_a_slash_split_into_ustar_prefix_like_go() -> None:
    name = "p" * 60 + "/" + "n" * 60
    data = tkn.tar_entry(name, b"{}")
    assert data[0:61] == b"n" * 60 + b"\0"
    assert data[345:406] == b"p" * 60 + b"\0"
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == [name]


def test_gzip_has_go_compress_gzip_header() -> None:
    data = b"tekton" * 100
    blob = tkn.compress(data)
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # no mtime/name, XFL fastest, OS unknown
    assert gzip.decompress(blob) == data
    assert blob == go_gzip(data)


def test_build_matches_tkn_bundle_push_byte_for_byte() -> None:
    resources = [task("build"), task("test", "make test && echo <done>"), task("lint")]
    image = tkn.build(objects(*resources))
    expected = tkn_bundle([tkn_object(r) for r in resources])
    assert image.manifest == expected.manifest
    assert image.config.data == expected.config
    assert [layer.data for layer in image.layers] == expected.layers
    assert image.digest == expected.digest


def test_layers_are_sorted_by_content_sha256() -> None:
    resources = [task(f"t{i}") for i in range(8)]
    image = tkn.build(objects(*resources))
    names = [layer.annotations[tkn.ANNOTATION_NAME] for layer in image.layers]
    by_hash = sorted(resources, key=lambda r: hashlib.sha256(tkn_object(r)).digest())
    assert names == [r["metadata"]["name"] for r in by_hash]
    assert names != [f"t{i}" for i in range(8)]  # the input order is not the hash order here


def test_config_created_labels_and_manifest_annotations() -> None:
    image = tkn.build(
        objects(task("a")),
        created=1700000000,
        labels={"b": "2", "a": "<x&y>"},
        annotations={"org.opencontainers.image.source": "https://example.invalid/r", "a": "1"},
    )
    config = image.config.data.decode()
    assert '"created":"2023-11-14T22:13:20Z"' in config
    assert config.endswith('"config":{"Labels":{"a":"\\u003cx\\u0026y\\u003e","b":"2"}}}')
    manifest = json.loads(image.manifest)
    assert list(manifest["annotations"]) == ["a", "org.opencontainers.image.source"]
    assert image.manifest.endswith(
        b'"annotations":{"a":"1","org.opencontainers.image.source":"https://example.invalid/r"}}'
    )


def test_empty_bundle_config_is_what_go_marshals_for_nil_slices() -> None:
    image = tkn.build([])
    assert image.config.data == (
        b'{"architecture":"","created":"1970-01-01T00:00:00Z","os":"",'
        b'"rootfs":{"type":"layers","diff_ids":null},"config":{}}'
    )
    assert image.manifest.endswith(b'"layers":[]}')


def test_more_than_twenty_objects_are_refused() -> None:
    with pytest.raises(tkn.BundleError, match="maximum 20"):
        tkn.build(objects(*(task(f"t{i}") for i in range(21))))


def test_go_json_escapes_like_encoding_json() -> None:
    assert (
        tkn.go_json({"k": "<a>&b \u2028\u2029 é \n"}) == '{"k":"\\u003ca\\u003e\\u0026b \\u2028\\u2029 é \\n"}'.encode()
    )


def manifest_with(layers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemaVersion": 2, "layers": layers}


def annotated(kind: str = "task", drop: str = "") -> dict[str, Any]:
    annotations = {tkn.ANNOTATION_API_VERSION: "v1", tkn.ANNOTATION_KIND: kind, tkn.ANNOTATION_NAME: "x"}
    return {"digest": "sha256:" + "0" * 64, "annotations": {k: v for k, v in annotations.items() if k != drop}}


def test_check_manifest_applies_tektons_compliance_rules() -> None:
    docker = "application/vnd.docker.distribution.manifest.v2+json"
    assert len(tkn.check_manifest(manifest_with([annotated()]), docker, "b")) == 1
    with pytest.raises(tkn.BundleError, match=r"no dev\.tekton\.image\.name annotation"):
        tkn.check_manifest(manifest_with([annotated(drop=tkn.ANNOTATION_NAME)]), docker, "b")
    with pytest.raises(tkn.BundleError, match="lower case and singular"):
        tkn.check_manifest(manifest_with([annotated("Task")]), docker, "b")
    with pytest.raises(tkn.BundleError, match="lower case and singular"):
        tkn.check_manifest(manifest_with([annotated("tasks")]), docker, "b")
    with pytest.raises(tkn.BundleError, match="21 objects"):
        tkn.check_manifest(manifest_with([annotated()] * 21), docker, "b")
    with pytest.raises(tkn.BundleError, match="not an image manifest"):
        tkn.check_manifest(manifest_with([]), "application/vnd.oci.image.index.v1+json", "b")


def test_layer_content_reads_the_first_tar_entry_or_the_raw_layer() -> None:
    assert tkn.layer_content(go_gzip(go_tar("a", b'{"a":1}')), "l") == b'{"a":1}'
    assert tkn.layer_content(go_tar("a", b'{"a":1}'), "l") == b'{"a":1}'  # uncompressed tar
    assert tkn.layer_content(gzip.compress(b"kind: Task\n"), "l") == b"kind: Task\n"  # raw, as Tekton accepts
    with pytest.raises(tkn.BundleError, match="zstd"):
        tkn.layer_content(b"\x28\xb5\x2f\xfd" + b"\0" * 20, "l")


def test_reusable_blob_only_for_exact_tkn_layers() -> None:
    content = tkn_object(task("a"))
    blob = go_gzip(go_tar("a", content))
    assert tkn.reusable_blob(blob, tkn.DOCKER_LAYER, "a", content) is blob
    assert tkn.reusable_blob(blob, tkn.DOCKER_LAYER, "b", content) is None
    assert tkn.reusable_blob(blob, tkn.DOCKER_LAYER, "a", content + b" ") is None
    assert tkn.reusable_blob(blob, "application/vnd.oci.image.layer.v1.tar+gzip", "a", content) is None


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped (about 1 KiB per MiB): a layer that is small to pull and huge to hold."""
    chunk = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [chunk.compress(b"\0" * (1 << 20)) for _ in range(size >> 20)]
    return b"".join(out) + chunk.flush()


def test_decompression_stops_at_the_layer_cap() -> None:
    bomb = gzip_bomb(1 << 30)  # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < 1100 << 10
    with pytest.raises(tkn.BundleError) as caught:
        tkn.layer_content(bomb, "reg/b layer 0")
    assert (
        str(caught.value) == f"reg/b layer 0: layer larger than {tkn.MAX_LAYER_BYTES} bytes once decompressed; refused"
    )
    assert tkn.reusable_blob(bomb, tkn.DOCKER_LAYER, "a", b"") is None
    # At the cap exactly is still a layer; gzip members in a row are one stream, as gzip(1) and Go read them.
    assert len(tkn.uncompressed(gzip_bomb(tkn.MAX_LAYER_BYTES), "l")) == tkn.MAX_LAYER_BYTES
    assert tkn.uncompressed(gzip.compress(b"kind: ") + gzip.compress(b"Task\n"), "l") == b"kind: Task\n"
    with pytest.raises(tkn.BundleError, match="broken gzip"):
        tkn.uncompressed(gzip.compress(b"kind: Task\n")[:-12], "l")
    with pytest.raises(tkn.BundleError, match="broken gzip"):
        tkn.uncompressed(b"\x1f\x8b\x08\x00garbage", "l")


def tar_of(member: tarfile.TarInfo, content: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member.size = len(content)
        tar.addfile(member, io.BytesIO(content) if member.isreg() else None)
    return out.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    return member


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (entry("t", tarfile.SYMTYPE, "/etc/shadow"), "tar entry 't' is a symlink, not a regular file; refused"),
        (entry("t", tarfile.LNKTYPE, "other"), "tar entry 't' is a hardlink, not a regular file; refused"),
        (entry("t", tarfile.CHRTYPE), "tar entry 't' is a device, not a regular file; refused"),
        (entry("t", tarfile.DIRTYPE), "tar entry 't' is a directory, not a regular file; refused"),
        (entry("t", tarfile.FIFOTYPE), "tar entry 't' is a FIFO, not a regular file; refused"),
        (entry("/abs/t"), "tar entry '/abs/t' has an absolute or '..' name; refused"),
        (entry("../t"), "tar entry '../t' has an absolute or '..' name; refused"),
    ],
    ids=["symlink", "hardlink", "device", "directory", "fifo", "absolute", "dotdot"],
)
def test_tar_entries_that_are_not_plain_relative_files_are_refused(member: tarfile.TarInfo, message: str) -> None:
    layer = go_gzip(tar_of(member, b'{"kind":"Task"}' if member.isreg() else b""))
    with pytest.raises(tkn.BundleError) as caught:
        tkn.layer_content(layer, "reg/b layer 0")
    assert str(caught.value) == f"reg/b layer 0: {message}"
