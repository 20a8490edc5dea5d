"""Tekton bundles exactly as `tkn bundle push` builds them, and reading any bundle Tekton can resolve.

Writing follows tektoncd/cli pkg/bundle/builder.go on go-containerregistry (empty.Image, mutate.Config,
mutate.Append per object, mutate.CreatedAt):
- one layer per object, media type `application/vnd.docker.image.rootfs.diff.tar.gzip`, annotated with
  `dev.tekton.image.apiVersion` (the version only, "v1"), `dev.tekton.image.kind` (lower case) and
  `dev.tekton.image.name`;
- the layer is a tar written by Go's archive/tar with a single regular file named after the object, mode
  0600, uid/gid 0, mtime 0, no user or group names, no end-of-archive padding beyond the two zero blocks;
  USTAR, or PAX (a `PaxHeaders.0/<name>` record) for names longer than 100 bytes;
- gzip at BestSpeed with a zero mtime and no file name (header bytes identical to Go's compress/gzip; the
  deflate stream is zlib's, which Go's own encoder does not reproduce byte for byte);
- layers sorted by the sha256 of the object's content; a docker v2 manifest and image config, with the
  config's `created` from SOURCE_DATE_EPOCH (else the epoch), one empty history entry per layer, the
  rootfs diff_ids, and Config.Labels; all JSON compact with Go's field order, sorted map keys and HTML
  escaping.

Reading follows tektoncd/pipeline's bundle resolver: each layer's first tar entry (or the raw layer when
it is no tar), looked up by the kind and name annotations.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from step_tracer.bundle.registry import DOCKER_MANIFEST, IMAGE_MANIFESTS, sha256_digest

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_CONFIGS = (DOCKER_CONFIG, OCI_CONFIG)
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ANNOTATION_API_VERSION = "dev.tekton.image.apiVersion"
ANNOTATION_KIND = "dev.tekton.image.kind"
ANNOTATION_NAME = "dev.tekton.image.name"
MAX_OBJECTS = 20  # tektoncd/pipeline pkg/remote/oci MaximumBundleObjects
# A layer holds one Tekton object, which the API server stores in etcd (at most 1.5 MiB a request): 16 MiB,
# compressed or not, is room to spare, and the bound that keeps a gzip bomb from exhausting memory.
MAX_LAYER_BYTES = 16 << 20

GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # how Go marshals an unset time.Time (the history entries)
_BLOCK = 512
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class BundleError(Exception):
    """The image is not a bundle Tekton would resolve, or cannot be built as one."""


@dataclass(frozen=True)
class BundleObject:
    """One object of a bundle: the layer annotations and the bytes Tekton decodes.

    `blob`, when set, is an existing compressed layer known to hold exactly this object in tkn's format;
    it is reused instead of compressing again (so an unchanged object keeps its layer digest).
    """

    version: str
    kind: str
    name: str
    content: bytes
    blob: bytes | None = None


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": self.media_type, "size": len(self.data), "digest": self.digest}
        if self.annotations:
            desc["annotations"] = dict(sorted(self.annotations.items()))
        return desc


@dataclass(frozen=True)
class Image:
    manifest: bytes
    media_type: str
    config: Blob
    layers: list[Blob]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


# Go encoding/json, as go-containerregistry marshals manifests and configs.


def go_json(value: Any) -> bytes:
    """json.Marshal's bytes for plain data whose dicts are already in Go's field order (maps: sort them)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def go_time(epoch: int) -> str:
    """RFC 3339 as Go marshals a time.Time without fractional seconds; always UTC (see module docstring)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Go archive/tar, for the header a single tar.Header{Name, Mode: 0600, Size, Typeflag: TypeReg} gets.


def _octal(value: int, width: int) -> bytes:
    """formatOctal: zero-padded octal leaving room for a NUL."""
    digits = format(value, "o")
    return digits.rjust(width - 1, "0").encode("ascii") + b"\0"


def _field(text: bytes, width: int) -> bytes:
    """formatString: the bytes, NUL-terminated when there is room, NUL-padded; empty when too long."""
    if len(text) > width:
        return b"\0" * width
    return text + b"\0" * (width - len(text))


def _to_ascii(text: str) -> bytes:
    return "".join(c for c in text if ord(c) < 0x80 and c != "\0").encode("ascii")


def _split_ustar(name: str) -> tuple[str, str] | None:
    """splitUSTARPath: a long ASCII path as (prefix, suffix) at a slash, when both fit."""
    length = len(name)
    if length <= 100 or not name.isascii() or "\0" in name:
        return None
    if length > 156:
        length = 156
    elif name[length - 1] == "/":
        length -= 1
    i = name.rfind("/", 0, length)
    nlen, plen = len(name) - i - 1, i
    if i <= 0 or nlen > 100 or nlen == 0 or plen > 155:
        return None
    return name[:i], name[i + 1 :]


def _header(name: bytes, prefix: bytes, typeflag: bytes, mode: int, size: int, *, devices: bool) -> bytes:
    block = bytearray(_BLOCK)
    block[0:100] = _field(name, 100)
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)
    block[156:157] = typeflag
    block[157:257] = _field(b"", 100)
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[265:297] = _field(b"", 32)
    block[297:329] = _field(b"", 32)
    if devices:
        block[329:337] = _octal(0, 8)
        block[337:345] = _octal(0, 8)
    block[345:500] = _field(prefix, 155)
    checksum = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
    block[148:156] = _octal(checksum, 7) + b" "
    return bytes(block)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % _BLOCK)


def _pax_record(key: str, value: str) -> str:
    size = len(key.encode()) + len(value.encode()) + 3
    size += len(str(size))
    record = f"{size} {key}={value}\n"
    if len(record.encode()) != size:
        size = len(record.encode())
        record = f"{size} {key}={value}\n"
    return record


def tar_entry(name: str, content: bytes) -> bytes:
    """The whole tar stream of one file, byte for byte what Go's tar.Writer writes for tkn."""
    if not name or name.endswith("/") or "\0" in name:
        raise BundleError(f"object name {name!r} cannot be a tar entry")
    out = b""
    split = _split_ustar(name)
    if name.isascii() and len(name) <= 100:
        header = _header(name.encode("ascii"), b"", b"0", 0o600, len(content), devices=True)
    elif split is not None:
        header = _header(split[1].encode("ascii"), split[0].encode("ascii"), b"0", 0o600, len(content), devices=True)
    else:
        records = _pax_record("path", name).encode("utf-8")
        directory, _, base = name.rpartition("/")
        pax_name = _to_ascii("/".join(p for p in (directory, "PaxHeaders.0", base) if p))[:100].rstrip(b"/")
        out += _header(pax_name, b"", b"x", 0, len(records), devices=False) + _padded(records)
        header = _header(_to_ascii(name), b"", b"0", 0o600, len(content), devices=True)
    return out + header + _padded(content) + b"\0" * (2 * _BLOCK)


def compress(data: bytes) -> bytes:
    """gzip at level 1 (Go's BestSpeed, go-containerregistry's default) with Go's header: no mtime, no name,
    XFL 4 (fastest), OS 255 (Python's gzip module writes OS 3)."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    return (
        _GZIP_MAGIC
        + b"\x08\x00\x00\x00\x00\x00\x04\xff"
        + body
        + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    )


# Building.


def build(
    objects: Sequence[BundleObject],
    *,
    created: int = 0,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """The image `tkn bundle push` would push for these objects (one input per object)."""
    if len(objects) > MAX_OBJECTS:
        raise BundleError(f"bundle contains more than the maximum {MAX_OBJECTS} allow objects")
    ordered = sorted(objects, key=lambda o: hashlib.sha256(o.content).digest())
    layers = []
    diff_ids = []
    for obj in ordered:
        tar = tar_entry(obj.name, obj.content)
        diff_ids.append(sha256_digest(tar))
        layer_annotations = {ANNOTATION_API_VERSION: obj.version, ANNOTATION_KIND: obj.kind, ANNOTATION_NAME: obj.name}
        layers.append(Blob(DOCKER_LAYER, obj.blob if obj.blob is not None else compress(tar), layer_annotations))
    config_file: dict[str, Any] = {"architecture": "", "created": go_time(created)}
    if layers:
        config_file["history"] = [{"created": GO_ZERO_TIME} for _ in layers]
    config_file["os"] = ""
    config_file["rootfs"] = {"type": "layers", "diff_ids": diff_ids or None}
    config_file["config"] = {"Labels": dict(sorted(labels.items()))} if labels else {}
    config = Blob(DOCKER_CONFIG, go_json(config_file))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(sorted(annotations.items()))
    return Image(go_json(manifest), DOCKER_MANIFEST, config, layers)


def reusable_blob(blob: bytes, media_type: str, name: str, content: bytes) -> bytes | None:
    """`blob` when it is already exactly tkn's layer for (name, content), so it can be kept as is."""
    if media_type != DOCKER_LAYER or not blob.startswith(_GZIP_MAGIC):
        return None
    try:
        return blob if uncompressed(blob, name) == tar_entry(name, content) else None
    except BundleError:
        return None


# Reading.


@dataclass(frozen=True)
class Layer:
    """A bundle layer as Tekton reads it."""

    descriptor: Mapping[str, Any]
    blob: bytes
    content: bytes

    @property
    def annotations(self) -> Mapping[str, str]:
        value = self.descriptor.get("annotations")
        return value if isinstance(value, dict) else {}

    @property
    def kind(self) -> str:
        return str(self.annotations.get(ANNOTATION_KIND, ""))

    @property
    def name(self) -> str:
        return str(self.annotations.get(ANNOTATION_NAME, ""))

    @property
    def version(self) -> str:
        return str(self.annotations.get(ANNOTATION_API_VERSION, ""))


def check_manifest(manifest: Mapping[str, Any], media_type: str, where: str) -> list[Mapping[str, Any]]:
    """The layer descriptors, after the checks Tekton's resolver makes (checkImageCompliance)."""
    if media_type not in IMAGE_MANIFESTS:
        raise BundleError(f"{where} is a {media_type or 'manifest of unknown type'}, not an image manifest")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
        raise BundleError(f"{where}: manifest has no layer list")
    if len(layers) > MAX_OBJECTS:
        raise BundleError(f"{where} contains {len(layers)} objects; a bundle holds at most {MAX_OBJECTS}")
    for i, desc in enumerate(layers):
        annotations = desc.get("annotations")
        annotations = annotations if isinstance(annotations, dict) else {}
        for key in (ANNOTATION_API_VERSION, ANNOTATION_NAME, ANNOTATION_KIND):
            if key not in annotations:
                raise BundleError(f"{where}: layer {i} has no {key} annotation; not a Tekton bundle")
        kind = str(annotations[ANNOTATION_KIND])
        if kind.lower().removesuffix("s") != kind:
            raise BundleError(f"{where}: layer {i}: {ANNOTATION_KIND} must be lower case and singular, not {kind!r}")
    return layers


def uncompressed(blob: bytes, where: str, limit: int = MAX_LAYER_BYTES) -> bytes:
    """The layer's bytes, gunzipped (every gzip member) without ever holding more than `limit` of them."""
    if blob.startswith(_ZSTD_MAGIC):
        raise BundleError(f"{where}: zstd-compressed layers are not supported")
    if not blob.startswith(_GZIP_MAGIC):
        return blob
    out = bytearray()
    rest = blob
    try:
        while rest:
            member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += member.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise BundleError(f"{where}: layer larger than {limit} bytes once decompressed; refused")
            if not member.eof:
                raise BundleError(f"{where}: broken gzip: truncated stream")
            rest = member.unused_data.lstrip(b"\0")  # Go and gzip(1) may pad after the last member
    except zlib.error as exc:
        raise BundleError(f"{where}: broken gzip: {exc}") from None
    return bytes(out)


def layer_content(blob: bytes, where: str) -> bytes:
    """The first tar entry's bytes, else the raw layer (both are what Tekton's resolver accepts).

    The entry must be a regular file with a relative name without `..`: a link, device or directory has no
    object to read (and a link would be followed to another entry or outside the archive).
    """
    data = uncompressed(blob, where)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            member = tar.next()
            if member is None:
                raise tarfile.ReadError("empty archive")
            _check_member(member, where)
            extracted = tar.extractfile(member)
            return extracted.read() if extracted is not None else b""
    except tarfile.TarError:
        return data


def _check_member(member: tarfile.TarInfo, where: str) -> None:
    name = member.name
    if not member.isreg():
        kinds = (
            (member.issym, "symlink"),
            (member.islnk, "hardlink"),
            (member.isfifo, "FIFO"),
            (member.isdev, "device"),
        )
        kind = next((k for test, k in (*kinds, (member.isdir, "directory")) if test()), "special file")
        raise BundleError(f"{where}: tar entry {name!r} is a {kind}, not a regular file; refused")
    if name.startswith("/") or ".." in name.split("/"):
        raise BundleError(f"{where}: tar entry {name!r} has an absolute or '..' name; refused")


def read_layers(
    manifest: Mapping[str, Any], media_type: str, fetch: Callable[[Mapping[str, Any]], bytes], where: str
) -> list[Layer]:
    layers = []
    for i, desc in enumerate(check_manifest(manifest, media_type, where)):
        blob = fetch(desc)
        layers.append(Layer(desc, blob, layer_content(blob, f"{where} layer {i}")))
    return layers
