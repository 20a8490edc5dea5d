"""`step-tracer bundle patch`: pull a Tekton bundle, instrument every object, push it in tkn's format.

Each layer's object goes through `step_tracer.inject.patch_text` like a file would; the patched objects
are validated as a bundle and written as `tkn bundle push` would write them (see tkn.py). Choices that
keep digests stable:
- objects that were compact, sorted-key JSON (what tkn makes of YAML input) are written that way again,
  so the layer is what `tkn bundle push` makes of the patched YAML; other JSON keeps its own layout;
- an unchanged object whose layer already is tkn's exact layer keeps that compressed blob;
- when nothing changes, the source manifest is copied as is (same digest), so patching twice is a no-op;
- the config's `created` is SOURCE_DATE_EPOCH, else the epoch (tkn's default), never the clock.
The source's config labels and manifest annotations are carried over (tkn's --label / --annotate).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from step_tracer.bundle import reference, tkn
from step_tracer.bundle.progress import Progress
from step_tracer.bundle.registry import INDEXES, MAX_CONFIG_BYTES, CredentialLookup, Registry, sha256_digest
from step_tracer.inject import InjectError, InjectOptions, Note, StepReport, patch_text, validate_bundle
from step_tracer.inject.documents import parse as parse_document


@dataclass
class ObjectResult:
    kind: str
    name: str
    changed: bool
    steps: list[StepReport] = field(default_factory=list)


@dataclass
class PatchReport:
    source: str  # the source, pinned by digest
    reference: str  # the destination repository @ digest (what would be pushed, for a dry run)
    digest: str
    changed: bool
    pushed: bool
    diff: str = ""
    notes: list[Note] = field(default_factory=list)
    objects: list[ObjectResult] = field(default_factory=list)


def source_date_epoch(env: Mapping[str, str]) -> int:
    """tkn's created time: SOURCE_DATE_EPOCH when set (an integer, else an error), otherwise 0."""
    value = env.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return 0
    try:
        return int(value, 10)
    except ValueError:
        raise tkn.BundleError(f"SOURCE_DATE_EPOCH={value!r} is not an integer number of seconds") from None


def canonical_json(data: Any) -> bytes:
    """What tkn stores for an object given as YAML: Go's json.Marshal of a map (sorted keys, compact)."""
    return tkn.go_json(_sorted(data))


def _sorted(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _sorted(data[k]) for k in sorted(data)}
    if isinstance(data, list):
        return [_sorted(v) for v in data]
    return data


def _pretty(data: Any) -> list[str]:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").splitlines(keepends=True)


@dataclass
class _Item:
    layer: tkn.Layer
    before: Any
    after: Any
    content: bytes
    changed: bool


def patch_bundle(
    src: str,
    dst: str,
    options: InjectOptions,
    *,
    dry_run: bool = False,
    insecure: bool = False,
    credentials: CredentialLookup | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> PatchReport:
    """Patch bundle `src` into tag `dst`. Raises InvalidReference, RegistryError, BundleError or InjectError."""
    env = os.environ if env is None else env
    progress = progress or Progress()
    src_ref, dst_ref = reference.parse(src), reference.parse(dst)
    if dst_ref.digest:
        raise tkn.BundleError(f"{dst}: the destination must be a tag; its digest is known only after patching")
    created = source_date_epoch(env)
    src_reg = Registry(src_ref.registry, insecure=insecure, credentials=credentials)
    dst_reg = (
        src_reg
        if dst_ref.registry == src_ref.registry
        else Registry(dst_ref.registry, insecure=insecure, credentials=credentials)
    )

    manifest = src_reg.get_manifest(src_ref.repository, src_ref.identifier)
    pinned = str(src_ref.with_digest(manifest.digest))
    if manifest.media_type in INDEXES:
        raise tkn.BundleError(f"{src} is an image index; a Tekton bundle is a single image manifest")
    data = manifest.json()
    descriptors = tkn.check_manifest(data, manifest.media_type, str(src_ref))
    if not descriptors:
        raise tkn.BundleError(f"{src} has no layers, so no Tekton objects")
    n = len(descriptors)
    progress.total = 2 + 2 * n + (0 if dry_run else n + 2)
    progress.advance(f"pulled manifest {src_ref.repository}")
    config_desc = data.get("config")
    if not isinstance(config_desc, dict) or not isinstance(config_desc.get("digest"), str):
        raise tkn.BundleError(f"{src}: manifest has no config")
    config_raw = src_reg.get_blob(src_ref.repository, config_desc["digest"], max_bytes=MAX_CONFIG_BYTES)
    progress.advance("pulled config")

    def fetch(desc: Mapping[str, Any]) -> bytes:
        digest = desc.get("digest")
        if not isinstance(digest, str):
            raise tkn.BundleError(f"{src}: a layer has no digest")
        blob = src_reg.get_blob(src_ref.repository, digest, max_bytes=tkn.MAX_LAYER_BYTES)
        progress.advance(f"pulled layer {digest[7:19]}")
        return blob

    layers = tkn.read_layers(data, manifest.media_type, fetch, str(src_ref))
    report = PatchReport(source=pinned, reference="", digest="", changed=False, pushed=False)
    items = [_patch_layer(i, layer, options, str(src_ref), report, progress) for i, layer in enumerate(layers)]

    problems = validate_bundle([it.after for it in items], source=str(src_ref))
    if problems:
        raise InjectError(problems)
    report.changed = any(it.changed for it in items)
    report.diff = "".join(
        line
        for it in items
        if it.changed
        for line in difflib.unified_diff(
            _pretty(it.before),
            _pretty(_single_object(it.content.decode("utf-8"), "patched object")),
            f"a/{src_ref}/{it.layer.kind}/{it.layer.name}",
            f"b/{dst_ref}/{it.layer.kind}/{it.layer.name}",
        )
    )

    if report.changed:
        image = tkn.build(
            [
                tkn.BundleObject(
                    it.layer.version,
                    it.layer.kind,
                    it.layer.name,
                    it.content,
                    None
                    if it.changed
                    else tkn.reusable_blob(
                        it.layer.blob, str(it.layer.descriptor.get("mediaType")), it.layer.name, it.content
                    ),
                )
                for it in items
            ],
            created=created,
            labels=_labels(config_desc, config_raw),
            annotations=_string_map(data.get("annotations")),
        )
        blobs = [*image.layers, image.config]
        manifest_raw, media_type = image.manifest, image.media_type
    else:
        blobs = [tkn.Blob("", it.layer.blob) for it in items] + [tkn.Blob("", config_raw)]
        manifest_raw, media_type = manifest.raw, manifest.media_type

    digest = sha256_digest(manifest_raw)
    report.digest = digest
    report.reference = f"{dst_ref.name}@{digest}"
    if dry_run:
        progress.close()
        return report
    mount_from = src_ref.repository if dst_reg is src_reg else None
    for blob in blobs:
        dst_reg.push_blob(dst_ref.repository, blob.data, mount_from=mount_from)
        progress.advance(f"pushed blob {blob.digest[7:19]}")
    assert dst_ref.tag is not None
    dst_reg.put_manifest(dst_ref.repository, dst_ref.tag, manifest_raw, media_type)
    progress.advance(f"pushed {dst_ref.repository}:{dst_ref.tag}")
    progress.close()
    report.pushed = True
    return report


def _patch_layer(
    index: int, layer: tkn.Layer, options: InjectOptions, where: str, report: PatchReport, progress: Progress
) -> _Item:
    source = f"{where} layer {index} ({layer.kind}/{layer.name})"
    try:
        text = layer.content.decode("utf-8")
    except UnicodeDecodeError:
        raise tkn.BundleError(f"{source}: content is not UTF-8 text") from None
    before = _single_object(text, source)
    result = patch_text(text, options, source=source)
    after = _single_object(result.text, source) if result.changed else before
    version = str(after.get("apiVersion", "")).rpartition("/")[2]
    kind = str(after.get("kind", "")).lower()
    meta = after.get("metadata")
    name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
    if (version, kind, name) != (layer.version, layer.kind, layer.name):
        raise tkn.BundleError(
            f"{source}: annotations say {layer.version} {layer.kind} {layer.name!r} but the content is "
            f"{version} {kind} {name!r}; Tekton resolves by the annotations, so this bundle is left alone"
        )
    content = layer.content
    if result.changed:
        canonical = canonical_json(before) == layer.content
        content = canonical_json(after) if canonical else result.text.encode("utf-8")
    report.notes += result.notes
    report.objects.append(ObjectResult(layer.kind, layer.name, result.changed, result.steps))
    progress.advance(f"patched {layer.kind}/{layer.name}")
    return _Item(layer, before, after, content, result.changed)


def _single_object(text: str, source: str) -> dict[str, Any]:
    docs = [d for d in parse_document(text, source).docs if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise tkn.BundleError(f"{source}: a bundle layer must hold exactly one object")
    return docs[0]


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _labels(config_desc: Mapping[str, Any], raw: bytes) -> dict[str, str]:
    if config_desc.get("mediaType") not in tkn.IMAGE_CONFIGS:
        return {}
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        raise tkn.BundleError("the bundle's image config is not JSON (or nests too deep)") from None
    inner = config.get("config") if isinstance(config, dict) else None
    return _string_map(inner.get("Labels") if isinstance(inner, dict) else None)
