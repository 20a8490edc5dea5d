"""Entrypoint lookup in the registry, for steps that run their image's ENTRYPOINT (no command, no script).

Mirrors tektoncd/pipeline pkg/pod/entrypoint_lookup_impl.go: the image config's Entrypoint, or its Cmd when
the Entrypoint is empty. For an index, Tekton records one command per platform and the step picks its
node's at run time; one wrapped `command` can only be right when every platform agrees, so an index
resolves to that common command, and to None (step left alone) when platforms differ, unless a platform
is named. "unknown/unknown" entries (attestations) are skipped, as Tekton does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from step_tracer.bundle import reference
from step_tracer.bundle.registry import (
    INDEXES,
    MAX_CONFIG_BYTES,
    CredentialLookup,
    Manifest,
    Registry,
    RegistryError,
)
from step_tracer.bundle.tkn import IMAGE_CONFIGS
from step_tracer.inject import Resolver


@dataclass(frozen=True)
class ImageCommand:
    """An image's Entrypoint and Cmd. Tekton runs a command-less step as Entrypoint + the step's args, or Cmd +
    args when Entrypoint is empty: its lookup (pkg/pod/entrypoint_lookup_impl.go, imageInfo) drops Cmd whenever
    Entrypoint is set, even for a step without args, unlike `docker run`."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]

    def command(self) -> list[str] | None:
        """What the Resolver contract asks for: Entrypoint, or Cmd when Entrypoint is empty."""
        return list(self.entrypoint or self.cmd) or None


class EntrypointLookup:
    """Looks images up through one Registry client per registry, caching results per image and digest."""

    def __init__(
        self,
        *,
        insecure: bool = False,
        credentials: CredentialLookup | None = None,
        platform: str | None = None,
        registry_factory: Callable[[str], Registry] | None = None,
    ) -> None:
        self.platform = platform
        self._factory = registry_factory or (lambda name: Registry(name, insecure=insecure, credentials=credentials))
        self._registries: dict[str, Registry] = {}
        self._by_digest: dict[str, dict[str, ImageCommand]] = {}

    def commands(self, image: str) -> dict[str, ImageCommand]:
        """Per platform ("os/arch[/variant]"), the image's command. Raises RegistryError / InvalidReference."""
        ref = reference.parse(image)
        registry = self._registries.get(ref.registry)
        if registry is None:
            registry = self._registries[ref.registry] = self._factory(ref.registry)
        manifest = registry.get_manifest(ref.repository, ref.identifier)
        key = f"{ref.name}@{manifest.digest}"
        if key not in self._by_digest:
            self._by_digest[key] = self._commands(registry, ref.repository, manifest, image)
        return self._by_digest[key]

    def _commands(self, registry: Registry, repository: str, manifest: Manifest, image: str) -> dict[str, ImageCommand]:
        data = manifest.json()
        if manifest.media_type in INDEXES:
            found: dict[str, ImageCommand] = {}
            for desc in data.get("manifests") or []:
                if not isinstance(desc, dict):
                    continue
                plat = _platform(desc.get("platform"))
                if plat == "unknown/unknown" or (self.platform is not None and plat != self.platform):
                    continue
                child = registry.get_manifest(repository, str(desc.get("digest")))
                if child.media_type in INDEXES:
                    raise RegistryError(f"{image}: nested image indexes are not supported")
                cmd, config_plat = self._image(registry, repository, child, image)
                found[plat or config_plat] = cmd
            return found
        cmd, plat = self._image(registry, repository, manifest, image)
        return {plat: cmd}

    def _image(self, registry: Registry, repository: str, manifest: Manifest, image: str) -> tuple[ImageCommand, str]:
        data = manifest.json()
        config = data.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise RegistryError(f"{image}: manifest {manifest.digest} has no config")
        if config.get("mediaType") not in IMAGE_CONFIGS:
            raise RegistryError(f"{image}: {config.get('mediaType')} is not a container image config")
        raw = registry.get_blob(repository, config["digest"], max_bytes=MAX_CONFIG_BYTES)
        try:
            cfg = json.loads(raw)
        except (ValueError, RecursionError):
            raise RegistryError(f"{image}: image config is not JSON (or nests too deep)") from None
        inner = cfg.get("config") if isinstance(cfg, dict) else None
        inner = inner if isinstance(inner, dict) else {}
        plat = "/".join(str(cfg.get(k) or "") for k in ("os", "architecture")) if isinstance(cfg, dict) else ""
        return ImageCommand(_strings(inner.get("Entrypoint")), _strings(inner.get("Cmd"))), plat

    def resolve(self, image: str) -> list[str] | None:
        """The Resolver: one command all (or the chosen) platforms share, else None."""
        per_platform = self.commands(image)
        commands = {tuple(c.command() or ()) for c in per_platform.values()}
        if len(commands) != 1:
            return None
        return list(commands.pop()) or None


def _platform(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    parts = [str(value.get("os") or ""), str(value.get("architecture") or "")]
    if value.get("variant"):
        parts.append(str(value["variant"]))
    return "/".join(parts)


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


def make_resolver(
    *,
    insecure: bool = False,
    credentials: CredentialLookup | None = None,
    platform: str | None = None,
) -> Resolver:
    """A `step_tracer.inject.Resolver` backed by the registry (docker-config auth; HTTP for loopback or
    `insecure`). Lookup failures raise; the inject planner reports them and leaves the step unwrapped."""
    lookup = EntrypointLookup(insecure=insecure, credentials=credentials, platform=platform)
    cache: dict[str, list[str] | Exception | None] = {}

    def resolve(image: str) -> list[str] | None:
        # Failures are cached too: a registry that refused once is not asked again for every step.
        if image not in cache:
            try:
                cache[image] = lookup.resolve(image)
            except (RegistryError, ValueError) as exc:
                cache[image] = exc
        found = cache[image]
        if isinstance(found, Exception):
            raise found
        return None if found is None else list(found)

    return resolve
