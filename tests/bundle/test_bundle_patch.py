"""`step-tracer bundle patch` end to end against a real registry: pull, patch, push, pull again, compare."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from step_tracer.inject import InjectOptions, patch_text
from tests.registry import (
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    RawClient,
    RegistryServer,
    docker_config,
    go_gzip,
    go_tar,
    pull_bundle,
    push_bundle,
    push_image,
    push_index,
    sha,
    tkn_bundle,
    tkn_object,
)

EXECUTABLE = str(Path(sys.executable).parent / "step-tracer")
WRAPPER = "/step-tracer/bin/step-tracer"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


def run(
    tmp_path: Path, *args: str, env: Mapping[str, str] | None = None, docker_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed launcher, with credentials looked up under tmp_path only."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "DOCKER_CONFIG": str(docker_dir or tmp_path / "docker"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        **(env or {}),
    }
    proc = subprocess.run(
        [EXECUTABLE, "bundle", "patch", *args],
        capture_output=True,
        env=environment,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    # Decoded by hand: text mode would turn the progress bar's carriage returns into newlines.
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def task(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "tekton.dev/v1", "kind": "Task", "metadata": {"name": name}, "spec": {"steps": steps}}


BUILD = task(
    "build",
    [
        {"name": "compile", "image": "golang:1.22", "script": "go build ./... && echo <ok>"},
        {"name": "push", "image": "quay.io/x/tool:1", "command": ["tool", "push"], "args": ["--all"]},
        {"name": "serve", "image": "quay.io/x/server:1"},
    ],
)
PIPELINE = {
    "apiVersion": "tekton.dev/v1",
    "kind": "Pipeline",
    "metadata": {"name": "ci"},
    "spec": {
        "tasks": [
            {"name": "build", "taskRef": {"name": "build"}},
            {"name": "inline", "taskSpec": {"steps": [{"name": "hello", "image": "alpine", "script": "echo hi"}]}},
        ]
    },
}
REFS_ONLY = {
    "apiVersion": "tekton.dev/v1",
    "kind": "Pipeline",
    "metadata": {"name": "refs-only"},
    "spec": {"tasks": [{"name": "build", "taskRef": {"name": "build"}}]},
}
STEPACTION = {
    "apiVersion": "tekton.dev/v1beta1",
    "kind": "StepAction",
    "metadata": {"name": "git-clone"},
    "spec": {"image": "alpine/git", "command": ["git", "clone"]},
}
RESOURCES = [BUILD, PIPELINE, REFS_ONLY, STEPACTION]


def seed(registry: RegistryServer, repo: str, resources: list[dict[str, Any]] = RESOURCES, **kwargs: Any) -> str:
    bundle = tkn_bundle([tkn_object(r) for r in resources], **kwargs)
    push_bundle(registry.raw(), repo, "v1", bundle)
    return bundle.digest


def test_round_trip(registry: RegistryServer, tmp_path: Path) -> None:
    source_digest = seed(registry, "rt/bundle")
    result = run(tmp_path, f"{registry.host}/rt/bundle:v1", f"{registry.host}/rt/bundle:v1-traced")
    assert result.returncode == 0, result.stderr
    pushed = pull_bundle(registry.raw(), "rt/bundle", "v1-traced")
    assert result.stdout == f"{registry.host}/rt/bundle@{pushed.digest}\n"
    assert pushed.digest != source_digest
    # The command-less step cannot be wrapped without --resolve-entrypoints: said once, on stderr.
    assert "step serve" in result.stderr and "ENTRYPOINT" in result.stderr
    assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal

    # tkn's format: exactly what the independent builder makes of the patched objects.
    assert pushed.media_type == DOCKER_MANIFEST
    assert pushed.raw_manifest == tkn_bundle(pushed.contents).manifest
    assert pushed.tars == [
        go_tar(o["metadata"]["name"], c) for o, c in zip(pushed.objects, pushed.contents, strict=True)
    ]
    assert [layer["mediaType"] for layer in pushed.manifest["layers"]] == [DOCKER_LAYER] * 4
    assert pushed.config["rootfs"]["diff_ids"] == [sha(t) for t in pushed.tars]

    # Every object is what the inject library makes of it; objects needing no change are untouched.
    original = pull_bundle(registry.raw(), "rt/bundle", "v1")
    options = InjectOptions()
    by_name = {o["metadata"]["name"]: c for o, c in zip(original.objects, original.contents, strict=True)}
    for obj in pushed.objects:
        name = obj["metadata"]["name"]
        assert obj == json.loads(patch_text(by_name[name].decode(), options).text)
    build = next(o for o in pushed.objects if o["metadata"]["name"] == "build")
    steps = {s["name"]: s for s in build["spec"]["steps"]}
    assert steps["compile"]["script"].startswith(f"#!{WRAPPER} run-script --tekton-step=compile")
    assert steps["push"]["command"][:2] == [WRAPPER, "run"]
    assert "command" not in steps["serve"]
    stepaction = next(o for o in pushed.objects if o["kind"] == "StepAction")
    assert stepaction["spec"]["command"][0] == WRAPPER

    # Canonical JSON stays canonical: the layer is what tkn makes of the patched objects written in YAML.
    assert all(c == tkn_object(o) for o, c in zip(pushed.objects, pushed.contents, strict=True))


def test_unchanged_layers_keep_their_compressed_blob(registry: RegistryServer, tmp_path: Path) -> None:
    """tkn's gzip bytes come from Go's encoder; an object that needs no change keeps its layer (and digest)."""
    bundle = tkn_bundle([tkn_object(r) for r in RESOURCES], level=9)
    push_bundle(registry.raw(), "reuse/bundle", "v1", bundle)
    result = run(tmp_path, f"{registry.host}/reuse/bundle:v1", f"{registry.host}/reuse/bundle:traced")
    assert result.returncode == 0, result.stderr
    pushed = pull_bundle(registry.raw(), "reuse/bundle", "traced")
    original = {json.loads(c)["metadata"]["name"]: blob for c, blob in zip(bundle.contents, bundle.layers, strict=True)}
    new = {o["metadata"]["name"]: blob for o, blob in zip(pushed.objects, pushed.blobs, strict=True)}
    content = {o["metadata"]["name"]: c for o, c in zip(pushed.objects, pushed.contents, strict=True)}
    assert new["refs-only"] == original["refs-only"]
    for name in ("build", "ci", "git-clone"):
        assert new[name] != original[name]
        assert new[name] == go_gzip(go_tar(name, content[name]))


def test_patching_twice_changes_nothing(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "idem/bundle")
    first = run(tmp_path, f"{registry.host}/idem/bundle:v1", f"{registry.host}/idem/bundle:once")
    assert first.returncode == 0, first.stderr
    second = run(tmp_path, f"{registry.host}/idem/bundle:once", f"{registry.host}/idem/bundle:twice")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "nothing to patch" in second.stderr
    assert registry.raw().get_manifest("idem/bundle", "twice") == registry.raw().get_manifest("idem/bundle", "once")


def test_a_patched_bundle_whose_tasks_changed_is_brought_up_to_date(registry: RegistryServer, tmp_path: Path) -> None:
    """A bundle built from patched Tasks that were edited afterwards (a new image, a new first step): patching it
    updates what step-tracer wrote there, exactly as patching the edited originals would have."""

    def edit(obj: dict[str, Any]) -> dict[str, Any]:
        obj = json.loads(json.dumps(obj))
        steps = obj["spec"]["steps"]
        steps[0]["image"] = "golang:1.23"
        steps.insert(0, {"name": "first", "image": "alpine", "script": "echo first"})
        return obj

    options = InjectOptions()
    patched = json.loads(patch_text(json.dumps(BUILD), options).text)
    seed(registry, "stale/bundle", [edit(patched), STEPACTION])
    result = run(tmp_path, f"{registry.host}/stale/bundle:v1", f"{registry.host}/stale/bundle:traced")
    assert result.returncode == 0, result.stderr
    pushed = pull_bundle(registry.raw(), "stale/bundle", "traced")
    build = next(o for o in pushed.objects if o["metadata"]["name"] == "build")
    assert build == json.loads(patch_text(json.dumps(edit(BUILD)), options).text)
    steps = {s["name"]: s for s in build["spec"]["steps"]}
    assert "--tekton-step-index=1" in steps["compile"]["script"] and steps["push"]["command"][5] == "2"
    again = run(tmp_path, f"{registry.host}/stale/bundle:traced", f"{registry.host}/stale/bundle:twice")
    assert again.returncode == 0 and "nothing to patch" in again.stderr


def test_results_dir_gets_the_pushed_bundle_as_tekton_results(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "results/bundle")
    results = tmp_path / "results"
    done = run(
        tmp_path,
        "--results-dir",
        str(results),
        f"{registry.host}/results/bundle:v1",
        f"{registry.host}/results/bundle:t",
    )
    assert done.returncode == 0, done.stderr
    url, digest = (results / "IMAGE_URL").read_text(), (results / "IMAGE_DIGEST").read_text()
    assert url == f"{registry.host}/results/bundle" and (results / "BUNDLE").read_text() == f"{url}@{digest}"
    assert done.stdout == f"{url}@{digest}\n"
    assert registry.raw().get_manifest("results/bundle", digest) == registry.raw().get_manifest("results/bundle", "t")


def test_source_date_epoch_makes_the_digest_reproducible(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "sde/bundle")
    src = f"{registry.host}/sde/bundle:v1"
    fixed = {"SOURCE_DATE_EPOCH": "1700000000"}
    a = run(tmp_path, src, f"{registry.host}/sde/bundle:a", env=fixed)
    b = run(tmp_path, src, f"{registry.host}/sde/bundle:b", env=fixed)
    c = run(tmp_path, src, f"{registry.host}/sde/bundle:c")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + b.stderr + c.stderr
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout
    pushed = pull_bundle(registry.raw(), "sde/bundle", "a")
    assert pushed.config["created"] == "2023-11-14T22:13:20Z"
    assert pull_bundle(registry.raw(), "sde/bundle", "c").config["created"] == "1970-01-01T00:00:00Z"
    bad = run(tmp_path, src, f"{registry.host}/sde/bundle:d", env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert bad.returncode == 2
    assert bad.stderr == "error: SOURCE_DATE_EPOCH='yesterday' is not an integer number of seconds\n"


def test_labels_and_annotations_are_kept(registry: RegistryServer, tmp_path: Path) -> None:
    bundle = tkn_bundle([tkn_object(BUILD)], labels='"Labels":{"team":"ci"}')
    manifest = json.loads(bundle.manifest)
    manifest["annotations"] = {"org.opencontainers.image.source": "https://example.invalid/repo"}
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    client = registry.raw()
    for blob in [*bundle.layers, bundle.config]:
        client.put_blob("keep/bundle", blob)
    client.put_manifest("keep/bundle", "v1", raw, DOCKER_MANIFEST)
    result = run(tmp_path, f"{registry.host}/keep/bundle:v1", f"{registry.host}/keep/bundle:traced")
    assert result.returncode == 0, result.stderr
    pushed = pull_bundle(client, "keep/bundle", "traced")
    assert pushed.config["config"] == {"Labels": {"team": "ci"}}
    assert pushed.manifest["annotations"] == manifest["annotations"]


def test_dry_run_prints_the_diff_and_pushes_nothing(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "dry/bundle")
    result = run(tmp_path, "--dry-run", f"{registry.host}/dry/bundle:v1", f"{registry.host}/dry/bundle:traced")
    assert result.returncode == 0, result.stderr
    assert f"--- a/{registry.host}/dry/bundle:v1/task/build\n" in result.stdout
    assert f"+++ b/{registry.host}/dry/bundle:traced/task/build\n" in result.stdout
    lines = result.stdout.splitlines()
    assert '-        "script": "go build ./... && echo <ok>"' in lines
    assert (
        f'+        "script": "#!{WRAPPER} run-script --tekton-step=compile --tekton-step-index=0\\n'
        '#!/bin/sh\\nset -e\\ngo build ./... && echo <ok>"'
    ) in lines
    assert f'+          "{WRAPPER}",' in lines  # the command step
    assert f"+++ b/{registry.host}/dry/bundle:traced/stepaction/git-clone" in lines
    assert "refs-only" not in result.stdout  # unchanged objects are not in the diff
    assert "dry run: nothing pushed" in result.stderr
    assert registry.raw().tags("dry/bundle") == ["v1"]


def test_more_than_twenty_objects_are_rejected(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "big/bundle", [task(f"t{i}", [{"name": "s", "image": "a", "script": "true"}]) for i in range(21)])
    result = run(tmp_path, f"{registry.host}/big/bundle:v1", f"{registry.host}/big/bundle:traced")
    assert result.returncode == 2
    assert result.stderr == f"error: {registry.host}/big/bundle:v1 contains 21 objects; a bundle holds at most 20\n"
    assert registry.raw().tags("big/bundle") == ["v1"]


def test_references_and_sources_that_cannot_work(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "bad/bundle")
    src = f"{registry.host}/bad/bundle:v1"
    pinned = run(tmp_path, src, f"{registry.host}/bad/bundle@sha256:" + "0" * 64)
    assert pinned.returncode == 2 and "the destination must be a tag" in pinned.stderr
    missing = run(tmp_path, f"{registry.host}/bad/nothing:v1", f"{registry.host}/bad/bundle:x")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "not found" in missing.stderr
    invalid = run(tmp_path, "Not A Reference", f"{registry.host}/bad/bundle:x")
    assert invalid.returncode == 2 and invalid.stderr.startswith("error: invalid image reference")
    image, size = push_image(registry.raw(), "bad/image", "v1", entrypoint=["/x"])
    empty = run(tmp_path, f"{registry.host}/bad/image:v1", f"{registry.host}/bad/image:x")
    assert (empty.returncode, empty.stderr) == (
        2,
        f"error: {registry.host}/bad/image:v1 has no layers, so no Tekton objects\n",
    )
    push_index(registry.raw(), "bad/image", "index", {"linux/amd64": (image, size)})
    index = run(tmp_path, f"{registry.host}/bad/image:index", f"{registry.host}/bad/image:x")
    assert index.returncode == 2
    assert index.stderr == (
        f"error: {registry.host}/bad/image:index is an image index; a Tekton bundle is a single image manifest\n"
    )
    assert registry.raw().tags("bad/bundle") == ["v1"]
    assert registry.raw().tags("bad/image") == ["index", "v1"]


def test_mismatched_annotations_are_refused(registry: RegistryServer, tmp_path: Path) -> None:
    bundle = tkn_bundle([tkn_object(BUILD)])
    raw = bundle.manifest.replace(b'"dev.tekton.image.name":"build"', b'"dev.tekton.image.name":"other"')
    client = registry.raw()
    for blob in [*bundle.layers, bundle.config]:
        client.put_blob("mismatch/bundle", blob)
    client.put_manifest("mismatch/bundle", "v1", raw, DOCKER_MANIFEST)
    result = run(tmp_path, f"{registry.host}/mismatch/bundle:v1", f"{registry.host}/mismatch/bundle:x")
    assert result.returncode == 2
    assert "annotations say v1 task 'other' but the content is v1 task 'build'" in result.stderr


def test_invalid_result_is_reported_with_its_location(registry: RegistryServer, tmp_path: Path) -> None:
    duplicate = task(
        "dup", [{"name": "a", "image": "x", "script": "true"}, {"name": "a", "image": "x", "script": "true"}]
    )
    seed(registry, "invalid/bundle", [duplicate])
    result = run(tmp_path, f"{registry.host}/invalid/bundle:v1", f"{registry.host}/invalid/bundle:x")
    assert result.returncode == 2
    assert "Task/dup: step a: step name used 2 times" in result.stderr
    assert registry.raw().tags("invalid/bundle") == ["v1"]


def test_progress_bar_on_request(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "progress/bundle")
    result = run(tmp_path, "--progress", f"{registry.host}/progress/bundle:v1", f"{registry.host}/progress/bundle:x")
    assert result.returncode == 0, result.stderr
    # manifest + config + 4 layers pulled, 4 objects patched, 4 layers + config + manifest pushed
    assert "\r[" in result.stderr and "\r[" + "#" * 24 + "] 16/16 pushed progress/bundle:x" in result.stderr
    assert result.stdout.count("\n") == 1


# Registries with auth, credentials from the docker config.


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("basic"), auth="htpasswd") as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("token"), auth="token") as server:
        yield server


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_auth_from_docker_config(
    kind: str, basic_registry: RegistryServer, token_registry: RegistryServer, tmp_path: Path
) -> None:
    registry = basic_registry if kind == "basic" else token_registry
    seed(registry, "auth/bundle")
    docker_config(tmp_path / "docker", {registry.host: ("alice", "wonderland")})
    result = run(tmp_path, f"{registry.host}/auth/bundle:v1", f"{registry.host}/auth/bundle:traced")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout == f"{registry.host}/auth/bundle@{pull_bundle(registry.raw(), 'auth/bundle', 'traced').digest}\n"
    )


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_auth_failure_is_one_clear_error(
    kind: str, basic_registry: RegistryServer, token_registry: RegistryServer, tmp_path: Path
) -> None:
    registry = basic_registry if kind == "basic" else token_registry
    seed(registry, "authfail/bundle")
    config = docker_config(tmp_path / "docker", {registry.host: ("alice", "wrong")})
    result = run(tmp_path, f"{registry.host}/authfail/bundle:v1", f"{registry.host}/authfail/bundle:x")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: manifest {registry.host}/authfail/bundle:v1: authentication failed: ")
    assert f"credentials from {config}" in lines[0]
    assert "Traceback" not in result.stderr

    config.unlink()
    anonymous = run(tmp_path, f"{registry.host}/authfail/bundle:v1", f"{registry.host}/authfail/bundle:x")
    assert anonymous.returncode == 2
    assert anonymous.stderr.count("\n") == 1
    assert f"no credentials for {registry.host} found (looked in {config}" in anonymous.stderr


def test_across_registries(registry: RegistryServer, basic_registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, "cross/bundle")
    docker_config(tmp_path / "docker", {basic_registry.host: ("alice", "wonderland")})
    result = run(tmp_path, f"{registry.host}/cross/bundle:v1", f"{basic_registry.host}/copied/bundle:traced")
    assert result.returncode == 0, result.stderr
    pushed = pull_bundle(basic_registry.raw(), "copied/bundle", "traced")
    assert result.stdout == f"{basic_registry.host}/copied/bundle@{pushed.digest}\n"
    assert len(pushed.objects) == 4


# Entrypoint resolution.


def test_resolve_entrypoints(registry: RegistryServer, tmp_path: Path) -> None:
    client = registry.raw()
    digest, _ = push_image(client, "ep/server", "1", entrypoint=["/usr/bin/server", "--port=80"], cmd=["--debug"])
    push_image(client, "ep/cmd-only", "1", cmd=["/bin/run"])
    steps: list[dict[str, Any]] = [
        {"name": "by-tag", "image": f"{registry.host}/ep/server:1", "args": ["--x"]},
        {"name": "by-digest", "image": f"{registry.host}/ep/server@{digest}", "args": ["--y"]},
        {"name": "cmd", "image": f"{registry.host}/ep/cmd-only:1"},
        {"name": "missing", "image": f"{registry.host}/ep/missing:1"},
    ]
    seed(registry, "ep/bundle", [task("eps", steps)])
    src, dst = f"{registry.host}/ep/bundle:v1", f"{registry.host}/ep/bundle:traced"

    without = run(tmp_path, "--dry-run", src, dst)
    assert without.returncode == 0
    assert "--tekton-step" not in without.stdout  # volumes and sidecar are added, but no step is wrapped
    assert without.stderr.count("ENTRYPOINT") == 4

    result = run(tmp_path, "--resolve-entrypoints", src, dst)
    assert result.returncode == 0, result.stderr
    (obj,) = pull_bundle(client, "ep/bundle", "traced").objects
    got = {s["name"]: s for s in obj["spec"]["steps"]}
    assert got["by-tag"]["command"][-3:] == ["--", "/usr/bin/server", "--port=80"]
    assert got["by-tag"]["args"] == ["--x"]
    assert got["by-digest"]["command"][-3:] == ["--", "/usr/bin/server", "--port=80"]
    assert got["cmd"]["command"][-2:] == ["--", "/bin/run"]
    assert "command" not in got["missing"]
    assert "step missing" in result.stderr and "not found" in result.stderr


def test_oci_bundle_with_a_raw_yaml_layer(registry: RegistryServer, tmp_path: Path) -> None:
    """Other tools push OCI manifests and raw (untarred) layers; Tekton reads them, so the patcher does too,
    and writes the result in tkn's format (the YAML text, patched in place, as the tar entry)."""
    text = (
        b"# built by hand\napiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: raw\n"
        b"spec:\n  steps:\n    - name: s\n      image: alpine\n      script: echo raw\n"
    )
    client = registry.raw()
    push_raw_bundle(client, "raw/bundle", gzip.compress(text), "raw")
    result = run(tmp_path, f"{registry.host}/raw/bundle:v1", f"{registry.host}/raw/bundle:traced")
    assert result.returncode == 0, result.stderr
    pushed = pull_bundle(client, "raw/bundle", "traced")
    assert pushed.media_type == DOCKER_MANIFEST
    (content,) = pushed.contents
    assert content.decode() == patch_text(text.decode(), InjectOptions()).text
    assert content.startswith(b"# built by hand\n")
    assert pushed.raw_manifest == tkn_bundle_of_yaml(pushed.contents, "raw")


def push_raw_bundle(client: RawClient, repo: str, layer: bytes, name: str) -> None:
    """An OCI bundle of one layer as other tools push it: `repo:v1`, the layer annotated as Task `name`."""
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": sha(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "size": len(layer),
                    "digest": sha(layer),
                    "annotations": {
                        "dev.tekton.image.apiVersion": "v1",
                        "dev.tekton.image.kind": "task",
                        "dev.tekton.image.name": name,
                    },
                }
            ],
        }
    ).encode()
    client.put_blob(repo, layer)
    client.put_blob(repo, config)
    client.put_manifest(repo, "v1", manifest, OCI_MANIFEST)


def _symlink_layer() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        member = tarfile.TarInfo("t")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(member)
    return gzip.compress(out.getvalue())


def _alias_bomb() -> bytes:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    return ("apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: t\n" + "\n".join(lines) + "\n").encode()


def _gzip_bomb() -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(deflate.compress(b"\0" * (1 << 20)) for _ in range(1024)) + deflate.flush()  # 1 GiB of zeros


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (_gzip_bomb, f"layer larger than {16 << 20} bytes once decompressed; refused"),
        (_symlink_layer, "tar entry 't' is a symlink, not a regular file; refused"),
        (lambda: gzip.compress(_alias_bomb()), "YAML aliases expand to more than 100000 extra nodes"),
        (lambda: gzip.compress(b"[" * 100_000), "JSON nested deeper than 200 levels"),
    ],
    ids=["gzip-bomb", "symlink", "alias-bomb", "deep-json"],
)
def test_hostile_layers_are_refused_in_one_line(
    registry: RegistryServer, tmp_path: Path, layer: Callable[[], bytes], message: str
) -> None:
    client = registry.raw()
    push_raw_bundle(client, "hostile/bundle", layer(), "t")
    result = run(tmp_path, f"{registry.host}/hostile/bundle:v1", f"{registry.host}/hostile/bundle:traced")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert f"{registry.host}/hostile/bundle:v1 layer 0" in result.stderr and message in result.stderr
    assert "traced" not in client.tags("hostile/bundle")


def tkn_bundle_of_yaml(contents: list[bytes], name: str) -> bytes:
    """The expected manifest for one YAML object stored as is (tkn_bundle parses JSON to find the name)."""
    (content,) = contents
    tar = go_tar(name, content)
    blob = go_gzip(tar)
    config = (
        '{"architecture":"","created":"1970-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],'
        f'"os":"","rootfs":{{"type":"layers","diff_ids":["{sha(tar)}"]}},"config":{{}}}}'
    ).encode()
    return (
        f'{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":'
        f'"application/vnd.docker.container.image.v1+json","size":{len(config)},"digest":"{sha(config)}"}},'
        f'"layers":[{{"mediaType":"{DOCKER_LAYER}","size":{len(blob)},"digest":"{sha(blob)}","annotations":'
        f'{{"dev.tekton.image.apiVersion":"v1","dev.tekton.image.kind":"task","dev.tekton.image.name":"{name}"}}}}]}}'
    ).encode()
