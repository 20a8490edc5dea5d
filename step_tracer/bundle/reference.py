"""Image references (`[registry/]repository[:tag][@digest]`), parsed the way docker and Tekton read them.

Defaults follow the docker reference grammar (distribution/reference): a first path component is a
registry only when it contains "." or ":", is "localhost" or has upper case; otherwise the registry is
Docker Hub and a single-component repository lives under "library/". Without a tag or digest the tag
is "latest".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Keys docker writes for Docker Hub in config.json, most specific first.
DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z")
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]+)?\Z"
)


class InvalidReference(ValueError):
    """Not a valid image reference."""


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Where the registry API answers (Docker Hub's is not docker.io)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after /manifests/: the digest when pinned (a tag beside it is ignored, as docker does)."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(text: str) -> Reference:
    """Parse `text`; raises InvalidReference naming what is wrong."""
    ref = text.strip()
    if not ref or ref != text or any(c.isspace() for c in ref):
        raise InvalidReference(f"invalid image reference {text!r}")
    digest = None
    if "@" in ref:
        ref, _, digest = ref.partition("@")
        if not _DIGEST.match(digest):
            raise InvalidReference(f"invalid digest in image reference {text!r}")
        algorithm, _, hex_part = digest.partition(":")
        if algorithm == "sha256" and len(hex_part) != 64:
            raise InvalidReference(f"invalid sha256 digest in image reference {text!r}")
    tag = None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid tag {tag!r} in image reference {text!r}")
    first, sep, rest = ref.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        registry, path = first, rest
        if not _HOST.match(registry):
            raise InvalidReference(f"invalid registry {registry!r} in image reference {text!r}")
    else:
        registry, path = DOCKER_HUB, ref
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not all(_COMPONENT.match(c) for c in path.split("/")):
        raise InvalidReference(f"invalid repository {path!r} in image reference {text!r} (lower case, digits, ._-)")
    if len(path) > 255:
        raise InvalidReference(f"repository name too long in image reference {text!r}")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def is_loopback(registry: str) -> bool:
    """localhost and loopback addresses, where registries speak plain HTTP by default (as docker assumes)."""
    host = registry
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
