"""Registry credentials from the files docker, podman and tkn read.

Order (the same as go-containerregistry's default keychain plus tkn's podman keychain, which `tkn bundle`
uses): the docker config ($DOCKER_CONFIG/config.json, else ~/.docker/config.json), then $REGISTRY_AUTH_FILE,
then ${XDG_RUNTIME_DIR}/containers/auth.json (or /run/containers/<uid>/auth.json). The first file that has
an entry for the registry wins. Entries: `auths` (base64 `auth`, or `username`/`password`,
`identitytoken`, `registrytoken`), and `credHelpers`/`credsStore` credential helpers.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from step_tracer import problem
from step_tracer.bundle.reference import DOCKER_HUB, DOCKER_HUB_AUTH_KEYS

HELPER_TIMEOUT = 30.0


class CredentialsError(Exception):
    """A credentials file or helper exists but cannot be used."""


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token (docker's "identitytoken")
    registry_token: str = ""  # a bearer token sent as is ("registrytoken")
    source: str = ""  # where they came from, for error messages

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def auth_files(env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    docker_dir = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME") or Path.home()) / ".docker")
    files = [Path(docker_dir) / "config.json"]
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    files.append(
        Path(runtime_dir) / "containers/auth.json" if runtime_dir else Path(f"/run/containers/{os.getuid()}/auth.json")
    )
    return files


def find_credentials(registry: str, repository: str = "", env: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials for `registry` (podman's repository-scoped keys such as "quay.io/org" count too), or None."""
    env = os.environ if env is None else env
    for path in auth_files(env):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CredentialsError(f"cannot read {path}: {problem.reason(exc)}") from None
        try:
            config = json.loads(text)
        except ValueError as exc:
            where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise CredentialsError(f"{path} is not valid JSON{where}") from None
        if not isinstance(config, dict):
            raise CredentialsError(f"{path} is not a JSON object")
        found = _from_config(config, str(path), registry, repository, env)
        if found is not None:
            return found
    return None


def _normalize(key: str) -> str:
    """A config key as host[/path]: docker writes "https://index.docker.io/v1/", podman "quay.io/org"."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            host, _, _ = key.partition("/")
            return host
    return key.rstrip("/")


def _match(keys: list[str], registry: str, repository: str) -> str | None:
    """The key that applies: the longest repository-scoped match, else the registry itself."""
    wanted = [registry] if registry != DOCKER_HUB else [_normalize(k) for k in DOCKER_HUB_AUTH_KEYS]
    full = f"{registry}/{repository}" if repository else registry
    best: tuple[int, str] | None = None
    for key in keys:
        norm = _normalize(key)
        if norm in wanted:
            score = 0
        elif "/" in norm and (full == norm or full.startswith(norm + "/")):
            score = len(norm)
        else:
            continue
        if best is None or score > best[0]:
            best = (score, key)
    return None if best is None else best[1]


def _from_config(
    config: dict[str, Any], source: str, registry: str, repository: str, env: Mapping[str, str]
) -> Credentials | None:
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        key = _match(list(helpers), registry, repository)
        if key is not None and isinstance(helpers[key], str):
            return _from_helper(helpers[key], key, source, env)
    auths = config.get("auths")
    entry: Any = None
    key = None
    if isinstance(auths, dict):
        key = _match(list(auths), registry, repository)
        entry = auths.get(key) if key is not None else None
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        # With a store, docker keeps only empty placeholders in "auths"; the secret is in the store.
        server = key if key is not None else (DOCKER_HUB_AUTH_KEYS[0] if registry == DOCKER_HUB else registry)
        found = _from_helper(store, server, source, env)
        if found is not None:
            return found
    if not isinstance(entry, dict):
        return None
    return _from_entry(entry, f"{source} (auths[{key!r}])")


def _from_entry(entry: dict[str, Any], source: str) -> Credentials | None:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"{source}: 'auth' is not base64 of user:password") from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise CredentialsError(f"{source}: 'auth' does not decode to user:password")
        username, password = user, secret
    identity = str(entry.get("identitytoken") or "")
    registry_token = str(entry.get("registrytoken") or "")
    if not (username or password or identity or registry_token):
        return None
    return Credentials(username, password, identity, registry_token, source)


def _from_helper(helper: str, server: str, source: str, env: Mapping[str, str]) -> Credentials | None:
    program = f"docker-credential-{helper}"
    path = shutil.which(program, path=env.get("PATH"))
    if path is None:
        raise CredentialsError(f"{source} names credential helper {program!r}, which is not on PATH")
    try:
        proc = subprocess.run(
            [path, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            env=dict(env),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"credential helper {program} failed: {problem.reason(exc)}") from None
    if proc.returncode != 0:
        message = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        if message and "credentials not found" in message[0].lower():
            return None
        raise CredentialsError(f"credential helper {program} failed for {server}: {' '.join(message)[:200]}")
    try:
        data = json.loads(proc.stdout)
        username, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    except (ValueError, AttributeError):
        raise CredentialsError(f"credential helper {program} printed no JSON credentials for {server}") from None
    where = f"credential helper {program} (from {source})"
    if username == "<token>":
        return Credentials(identity_token=secret, source=where)
    if not (username or secret):
        return None
    return Credentials(username, secret, source=where)
