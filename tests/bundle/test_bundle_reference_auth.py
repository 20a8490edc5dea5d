"""Image references and registry credentials (files and credential helpers, no registry needed)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from step_tracer.bundle.auth import Credentials, CredentialsError, auth_files, find_credentials
from step_tracer.bundle.reference import InvalidReference, Reference, is_loopback, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", Reference("docker.io", "library/alpine", "latest")),
        ("alpine:3.20", Reference("docker.io", "library/alpine", "3.20")),
        ("docker.io/alpine", Reference("docker.io", "library/alpine", "latest")),
        ("index.docker.io/org/x:1", Reference("docker.io", "org/x", "1")),
        ("org/x", Reference("docker.io", "org/x", "latest")),
        ("quay.io/org/sub/x:v1.0-rc_1", Reference("quay.io", "org/sub/x", "v1.0-rc_1")),
        ("localhost/x", Reference("localhost", "x", "latest")),
        ("localhost:5000/x:t", Reference("localhost:5000", "x", "t")),
        ("127.0.0.1:5000/a/b@" + DIGEST, Reference("127.0.0.1:5000", "a/b", None, DIGEST)),
        ("reg.example:443/a:t@" + DIGEST, Reference("reg.example:443", "a", "t", DIGEST)),
        ("[::1]:5000/a", Reference("[::1]:5000", "a", "latest")),
        ("Host/a", Reference("Host", "a", "latest")),
        ("a/b__c/d-e.f", Reference("docker.io", "a/b__c/d-e.f", "latest")),
    ],
)
def test_parse(text: str, expected: Reference) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " alpine",
        "alpine ",
        "Alpine",
        "a//b",
        "a/",
        "x:",
        "x:-bad",
        "x@sha256:12",
        "x@" + DIGEST[:-2],
        "a/B:1",
        "-a",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse(text)


def test_reference_parts() -> None:
    ref = parse("quay.io/org/x:1@" + DIGEST)
    assert ref.identifier == DIGEST  # pinned: the tag is informational, as for docker
    assert ref.name == "quay.io/org/x"
    assert str(ref) == "quay.io/org/x:1@" + DIGEST
    assert str(ref.with_digest("sha256:" + "cd" * 32)) == "quay.io/org/x@sha256:" + "cd" * 32
    assert parse("alpine").api_host == "registry-1.docker.io"
    assert parse("quay.io/a").api_host == "quay.io"


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.5.6.7", True),
        ("[::1]:5000", True),
        ("quay.io", False),
        ("10.0.0.1:5000", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(registry: str, loopback: bool) -> None:
    assert is_loopback(registry) is loopback


# Credentials.


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose credential files all live under tmp_path (never the user's own)."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **extra,
    }


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_docker_config_in_home_and_in_docker_config(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    write(tmp_path / "home/.docker/config.json", {"auths": {"quay.io": auth("u", "p:w")}})
    found = find_credentials("quay.io", "org/x", env)
    assert found is not None and (found.username, found.password) == ("u", "p:w")
    assert "home/.docker/config.json" in found.source
    assert "p:w" not in repr(found)

    env["DOCKER_CONFIG"] = str(tmp_path / "elsewhere")
    assert find_credentials("quay.io", "org/x", env) is None
    write(tmp_path / "elsewhere/config.json", {"auths": {"https://quay.io": {"username": "v", "password": "q"}}})
    found = find_credentials("quay.io", "org/x", env)
    assert found is not None and (found.username, found.password) == ("v", "q")


def test_docker_hub_keys(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    write(tmp_path / "home/.docker/config.json", {"auths": {"https://index.docker.io/v1/": auth("hub", "pw")}})
    found = find_credentials("docker.io", "library/alpine", env)
    assert found is not None and found.username == "hub"
    assert find_credentials("quay.io", "library/alpine", env) is None


def test_podman_auth_files_and_repository_scoped_keys(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    write(tmp_path / "home/.docker/config.json", {"auths": {"other.io": auth("x", "y")}})
    write(
        tmp_path / "run/containers/auth.json",
        {"auths": {"quay.io": auth("reg", "1"), "quay.io/org": auth("org", "2"), "quay.io/org/x": auth("x", "3")}},
    )
    assert getattr(find_credentials("quay.io", "org/x", env), "username", None) == "x"
    assert getattr(find_credentials("quay.io", "org/y", env), "username", None) == "org"
    assert getattr(find_credentials("quay.io", "orgy/z", env), "username", None) == "reg"

    env["REGISTRY_AUTH_FILE"] = str(write(tmp_path / "podman.json", {"auths": {"quay.io": auth("file", "4")}}))
    assert getattr(find_credentials("quay.io", "org/x", env), "username", None) == "file"  # before XDG's
    assert auth_files(env) == [
        tmp_path / "home/.docker/config.json",
        tmp_path / "podman.json",
        tmp_path / "run/containers/auth.json",
    ]


def test_identity_and_registry_tokens(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    write(
        tmp_path / "home/.docker/config.json",
        {"auths": {"a.io": {"identitytoken": "refresh"}, "b.io": {"registrytoken": "bearer"}, "c.io": {}}},
    )
    assert find_credentials("a.io", "r", env) == Credentials(identity_token="refresh", source=_source(tmp_path, "a.io"))
    assert find_credentials("b.io", "r", env) == Credentials(registry_token="bearer", source=_source(tmp_path, "b.io"))
    assert find_credentials("c.io", "r", env) is None


def _source(tmp_path: Path, key: str) -> str:
    return f"{tmp_path / 'home/.docker/config.json'} (auths[{key!r}])"


def test_broken_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    path = tmp_path / "home/.docker/config.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CredentialsError, match=str(path)):
        find_credentials("quay.io", "r", env)
    write(path, {"auths": {"quay.io": {"auth": "!!!"}}})
    with pytest.raises(CredentialsError, match="not base64"):
        find_credentials("quay.io", "r", env)


HELPER = """#!/bin/sh
read server
echo "$server" >> "{log}"
case "$server" in
  quay.io) echo '{{"ServerURL":"quay.io","Username":"helper-user","Secret":"helper-secret"}}' ;;
  token.io) echo '{{"ServerURL":"token.io","Username":"<token>","Secret":"refresh-me"}}' ;;
  broken.io) echo 'boom' >&2; exit 3 ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
"""


def helper(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    script = bin_dir / "docker-credential-fake"
    script.write_text(HELPER.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = env_for(tmp_path)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env, log


def test_credential_helpers(tmp_path: Path) -> None:
    env, log = helper(tmp_path)
    write(tmp_path / "home/.docker/config.json", {"credHelpers": {"quay.io": "fake", "token.io": "fake"}})
    found = find_credentials("quay.io", "r", env)
    assert found is not None and (found.username, found.password) == ("helper-user", "helper-secret")
    assert "docker-credential-fake" in found.source
    token = find_credentials("token.io", "r", env)
    assert token is not None and token.identity_token == "refresh-me" and not token.username
    assert find_credentials("other.io", "r", env) is None  # no helper for it, no auths entry
    assert log.read_text().split() == ["quay.io", "token.io"]


def test_creds_store_and_its_failures(tmp_path: Path) -> None:
    env, _ = helper(tmp_path)
    write(tmp_path / "home/.docker/config.json", {"credsStore": "fake", "auths": {"quay.io": {}}})
    found = find_credentials("quay.io", "r", env)
    assert found is not None and found.username == "helper-user"
    assert find_credentials("unknown.io", "r", env) is None
    with pytest.raises(CredentialsError, match="boom"):
        find_credentials("broken.io", "r", env)
    write(tmp_path / "home/.docker/config.json", {"credsStore": "missing"})
    with pytest.raises(CredentialsError, match="docker-credential-missing"):
        find_credentials("quay.io", "r", env)
