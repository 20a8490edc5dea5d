"""ENTRYPOINT lookup in a real registry (`make_resolver`, the Resolver `inject --resolve-entrypoints` uses)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from step_tracer.bundle.auth import Credentials, find_credentials
from step_tracer.bundle.reference import InvalidReference
from step_tracer.bundle.registry import AuthError, NotFoundError
from step_tracer.bundle.resolve import EntrypointLookup, ImageCommand, make_resolver
from step_tracer.inject import InjectOptions, patch_text
from step_tracer.inject.steps import wrapper_command
from tests.registry import RegistryServer, docker_config, push_image, push_index


def nobody(registry: str, repository: str) -> Credentials | None:
    return None


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        client = server.raw()
        push_image(client, "img/both", "1", entrypoint=["/entry", "-x"], cmd=["--default"])
        push_image(client, "img/cmd", "1", cmd=["/bin/sh", "-c", "date"])
        push_image(client, "img/none", "1")
        push_image(client, "img/oci", "1", entrypoint=["/oci"], oci=True)
        amd = push_image(client, "img/multi", "amd64", entrypoint=["/same"], arch="amd64")
        arm = push_image(client, "img/multi", "arm64", entrypoint=["/same"], arch="arm64")
        other = push_image(client, "img/multi", "other", entrypoint=["/different"], arch="arm64")
        push_index(client, "img/multi", "agree", {"linux/amd64": amd, "linux/arm64": arm}, attestation=other)
        push_index(client, "img/multi", "differ", {"linux/amd64": amd, "linux/arm64": other})
        yield server


def test_entrypoint_by_tag_and_by_digest(registry: RegistryServer) -> None:
    resolve = make_resolver(credentials=nobody)
    assert resolve(f"{registry.host}/img/both:1") == ["/entry", "-x"]
    _, _, digest = registry.raw().get_manifest("img/both", "1")
    assert resolve(f"{registry.host}/img/both@{digest}") == ["/entry", "-x"]
    assert resolve(f"{registry.host}/img/both:ignored@{digest}") == ["/entry", "-x"]


def test_cmd_when_no_entrypoint_and_none_when_neither(registry: RegistryServer) -> None:
    resolve = make_resolver(credentials=nobody)
    assert resolve(f"{registry.host}/img/cmd:1") == ["/bin/sh", "-c", "date"]
    assert resolve(f"{registry.host}/img/none:1") is None
    assert resolve(f"{registry.host}/img/oci:1") == ["/oci"]


def test_image_command_keeps_entrypoint_and_cmd_apart(registry: RegistryServer) -> None:
    lookup = EntrypointLookup(credentials=nobody)
    assert lookup.commands(f"{registry.host}/img/both:1") == {
        "linux/amd64": ImageCommand(("/entry", "-x"), ("--default",))
    }


def test_image_command_is_what_tekton_runs() -> None:
    # Tekton keeps Entrypoint and drops Cmd when both are set (imageInfo in pkg/pod/entrypoint_lookup_impl.go).
    assert ImageCommand(("/entry",), ("--default",)).command() == ["/entry"]
    assert ImageCommand((), ("/cmd", "x")).command() == ["/cmd", "x"]
    assert ImageCommand((), ()).command() is None


def test_index_resolves_when_platforms_agree(registry: RegistryServer) -> None:
    lookup = EntrypointLookup(credentials=nobody)
    assert set(lookup.commands(f"{registry.host}/img/multi:agree")) == {"linux/amd64", "linux/arm64"}  # no unknown
    assert make_resolver(credentials=nobody)(f"{registry.host}/img/multi:agree") == ["/same"]
    assert make_resolver(credentials=nobody)(f"{registry.host}/img/multi:differ") is None
    assert make_resolver(credentials=nobody, platform="linux/arm64")(f"{registry.host}/img/multi:differ") == [
        "/different"
    ]


def test_lookup_errors_raise_and_are_cached(tmp_path: Path) -> None:
    resolve = make_resolver(credentials=nobody)
    with RegistryServer(tmp_path / "short-lived") as server:
        push_image(server.raw(), "img/x", "1", entrypoint=["/x"])
        assert resolve(f"{server.host}/img/x:1") == ["/x"]
        with pytest.raises(NotFoundError, match="not found"):
            resolve(f"{server.host}/img/missing:1")
    # The registry is gone: both answers come from the cache.
    assert resolve(f"{server.host}/img/x:1") == ["/x"]
    with pytest.raises(NotFoundError):
        resolve(f"{server.host}/img/missing:1")
    with pytest.raises(InvalidReference):
        resolve("Not/Valid Image")


def test_docker_config_credentials(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "basic", auth="htpasswd") as server:
        push_image(server.raw(), "private/tool", "1", entrypoint=["/tool"])
        docker_config(tmp_path / "docker", {server.host: ("alice", "wonderland")})
        env = {"DOCKER_CONFIG": str(tmp_path / "docker"), "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
        resolve = make_resolver(credentials=lambda reg, repo: find_credentials(reg, repo, env))
        assert resolve(f"{server.host}/private/tool:1") == ["/tool"]
        with pytest.raises(AuthError, match="no credentials"):
            make_resolver(credentials=nobody)(f"{server.host}/private/tool:1")


def test_inject_wraps_with_the_resolved_entrypoint(registry: RegistryServer) -> None:
    text = (
        "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: t\nspec:\n  steps:\n"
        f"    - name: run\n      image: {registry.host}/img/cmd:1\n"
        f"    - name: gone\n      image: {registry.host}/img/gone:1\n"
    )
    options = InjectOptions(resolve_entrypoints=True, resolve=make_resolver(credentials=nobody))
    result = patch_text(text, options)
    steps = YAML(typ="safe", pure=True).load(result.text)["spec"]["steps"]
    assert steps[0]["command"] == [*wrapper_command(options, "run", 0, None), "/bin/sh", "-c", "date"]
    assert "command" not in steps[1]
    states = {r.location.step: r.state for r in result.steps}
    assert states == {"run": "wrapped", "gone": "unwrapped"}
    assert any("img/gone:1" in n.message and "not found" in n.message for n in result.warnings)
