"""The OCI distribution client against a real registry: blobs, manifests, uploads, mounts, auth, TLS."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from step_tracer.bundle.auth import Credentials, find_credentials
from step_tracer.bundle.registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    AuthError,
    CredentialLookup,
    Manifest,
    NotFoundError,
    Registry,
    RegistryError,
    parse_challenge,
    sha256_digest,
)
from tests.otlp_receiver import TlsCA
from tests.registry import RegistryServer, docker_config, push_image


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


def from_config(tmp_path: Path, auths: dict[str, tuple[str, str]]) -> CredentialLookup:
    """Credentials read the way the CLI reads them, from a docker config under tmp_path only."""
    docker_config(tmp_path / "docker", auths)
    env = {"DOCKER_CONFIG": str(tmp_path / "docker"), "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    return lambda registry, repository: find_credentials(registry, repository, env)


def no_credentials(registry: str, repository: str) -> Credentials | None:
    return None


def manifest_for(config: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": sha256_digest(config),
            },
            "layers": [],
        }
    ).encode()


def test_blobs_and_manifests_round_trip(registry: RegistryServer) -> None:
    client = Registry(registry.host, credentials=no_credentials)
    assert client.scheme == "http"  # loopback registries speak plain HTTP
    config = b'{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
    digest = sha256_digest(config)
    assert not client.blob_exists("rt/a", digest)
    assert client.push_blob("rt/a", config) == digest
    assert client.blob_exists("rt/a", digest)
    assert client.push_blob("rt/a", config) == digest  # already there: no second upload
    assert client.get_blob("rt/a", digest) == config
    assert registry.raw().get_blob("rt/a", digest) == config

    raw = manifest_for(config)
    assert client.put_manifest("rt/a", "v1", raw, DOCKER_MANIFEST) == sha256_digest(raw)
    by_tag = client.get_manifest("rt/a", "v1")
    by_digest = client.get_manifest("rt/a", sha256_digest(raw))
    assert by_tag == by_digest
    assert (by_tag.media_type, by_tag.raw, by_tag.digest) == (DOCKER_MANIFEST, raw, sha256_digest(raw))


def test_missing_things_are_not_found(registry: RegistryServer) -> None:
    client = Registry(registry.host, credentials=no_credentials)
    with pytest.raises(NotFoundError, match=r"manifest 127\.0\.0\.1:\d+/rt/missing:v1: not found"):
        client.get_manifest("rt/missing", "v1")
    with pytest.raises(NotFoundError, match="not found"):
        client.get_blob("rt/missing", "sha256:" + "0" * 64)


def test_cross_repository_mount(registry: RegistryServer) -> None:
    client = Registry(registry.host, credentials=no_credentials)
    data = b"mount me"
    client.push_blob("mnt/source", data)
    assert not client.blob_exists("mnt/target", sha256_digest(data))
    client.push_blob("mnt/target", data, mount_from="mnt/source")
    assert registry.raw().get_blob("mnt/target", sha256_digest(data)) == data


def test_unreachable_registry_is_one_clear_error(tmp_path: Path) -> None:
    from tests.otlp_receiver import free_port

    client = Registry(f"127.0.0.1:{free_port()}", credentials=no_credentials, timeout=10)
    with pytest.raises(RegistryError, match=r"cannot reach http://127\.0\.0\.1:\d+"):
        client.get_manifest("a", "b")


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push",error="x"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
        "error": "x",
    }
    assert parse_challenge('Basic realm="r"') == ("basic", {"realm": "r"})


# Basic auth (htpasswd).


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("basic"), auth="htpasswd") as server:
        yield server


def test_basic_auth_from_docker_config(basic_registry: RegistryServer, tmp_path: Path) -> None:
    client = Registry(
        basic_registry.host, credentials=from_config(tmp_path, {basic_registry.host: ("alice", "wonderland")})
    )
    client.push_blob("basic/a", b"secret data")
    assert client.get_blob("basic/a", sha256_digest(b"secret data")) == b"secret data"


def test_basic_auth_wrong_password(basic_registry: RegistryServer, tmp_path: Path) -> None:
    client = Registry(basic_registry.host, credentials=from_config(tmp_path, {basic_registry.host: ("alice", "nope")}))
    with pytest.raises(AuthError) as info:
        client.get_manifest("basic/a", "v1")
    message = str(info.value)
    assert "authentication failed: the registry rejected the credentials from" in message
    assert str(tmp_path / "docker/config.json") in message
    assert "\n" not in message


def test_basic_auth_without_credentials(basic_registry: RegistryServer) -> None:
    client = Registry(basic_registry.host, credentials=no_credentials)
    with pytest.raises(AuthError, match=f"no credentials for {basic_registry.host} found"):
        client.blob_exists("basic/a", "sha256:" + "0" * 64)


# Bearer tokens.


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("token"), auth="token", refresh_tokens={"refresh-1": "alice"})
    with server:
        yield server


def test_bearer_tokens_per_scope(token_registry: RegistryServer, tmp_path: Path) -> None:
    assert token_registry.token_server is not None
    requests = token_registry.token_server.requests
    requests.clear()
    client = Registry(
        token_registry.host, credentials=from_config(tmp_path, {token_registry.host: ("alice", "wonderland")})
    )
    client.push_blob("tok/a", b"layer")
    client.get_blob("tok/a", sha256_digest(b"layer"))
    client.get_blob("tok/a", sha256_digest(b"layer"))
    assert [r["user"] for r in requests] == ["alice", "alice"]
    assert [r["scopes"] for r in requests] == [["repository:tok/a:pull,push"], ["repository:tok/a:pull"]]
    assert requests[0]["service"] == ["step-tracer-test-registry"]


def test_bearer_with_identity_token(token_registry: RegistryServer, tmp_path: Path) -> None:
    assert token_registry.token_server is not None
    token_registry.token_server.requests.clear()
    registry = token_registry.host
    client = Registry(registry, credentials=lambda reg, repo: Credentials(identity_token="refresh-1", source="test"))
    client.push_blob("tok/b", b"via refresh token")
    assert [r["method"] for r in token_registry.token_server.requests] == ["POST"]
    bad = Registry(registry, credentials=lambda reg, repo: Credentials(identity_token="stale", source="test"))
    with pytest.raises(AuthError, match="token server rejected the credentials from test"):
        bad.get_blob("tok/b", sha256_digest(b"via refresh token"))


def test_bearer_wrong_password_and_anonymous(token_registry: RegistryServer, tmp_path: Path) -> None:
    wrong = Registry(token_registry.host, credentials=from_config(tmp_path, {token_registry.host: ("alice", "x")}))
    with pytest.raises(AuthError, match=r"token server rejected the credentials from .*config\.json"):
        wrong.get_manifest("tok/a", "v1")
    anonymous = Registry(token_registry.host, credentials=no_credentials)
    # The token server grants anonymous users nothing: the registry still says 401.
    with pytest.raises(AuthError, match=r"no credentials for .* found"):
        anonymous.get_manifest("tok/a", "v1")


def test_registry_token_is_used_as_is(token_registry: RegistryServer) -> None:
    assert token_registry.token_server is not None
    now_token = token_registry.raw()._auth("/v2/tok/c/blobs/uploads/")
    assert now_token is not None
    client = Registry(
        token_registry.host,
        credentials=lambda reg, repo: Credentials(registry_token=now_token[len("Bearer ") :], source="t"),
    )
    token_registry.token_server.requests.clear()
    client.push_blob("tok/c", b"pre-issued")
    assert token_registry.token_server.requests == []


# TLS.


def test_https_registry(tmp_path: Path, tls_ca: TlsCA) -> None:
    ca = tls_ca.write_ca_pem()
    with RegistryServer(tmp_path / "tls", tls=tls_ca.write_server_cert(), cafile=ca) as server:
        context = ssl.create_default_context(cafile=str(ca))
        client = Registry(server.host, credentials=no_credentials, scheme="https", ssl_context=context)
        digest, _ = push_image(server.raw(), "tls/img", "v1", entrypoint=["/x"])
        assert client.get_manifest("tls/img", "v1").digest == digest
        untrusted = Registry(server.host, credentials=no_credentials, scheme="https")
        with pytest.raises(RegistryError, match=r"cannot reach https://.*CERTIFICATE_VERIFY_FAILED"):
            untrusted.get_manifest("tls/img", "v1")


# Redirects (registries hand blob downloads to storage elsewhere).


class _Server:
    """A tiny HTTP server on 127.0.0.1 answering with `respond(path, headers) -> (status, headers, body)`."""

    def __init__(self, respond: Callable[[str, Mapping[str, str]], tuple[int, dict[str, str], bytes]]) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.seen.append((self.path, headers))
                status, out_headers, body = respond(self.path, headers)
                self.send_response(status)
                for key, value in {**out_headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_blob_redirects_drop_the_registry_credentials() -> None:
    data = b"stored elsewhere"
    digest = sha256_digest(data)
    expected_auth = "Basic " + base64.b64encode(b"u:p").decode()

    with _Server(lambda path, headers: (200, {}, data)) as storage:

        def front(path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
            if headers.get("authorization") != expected_auth:
                return 401, {"WWW-Authenticate": 'Basic realm="front"'}, b""
            return 307, {"Location": f"http://{storage.host}/blobs/{digest}?signature=abc"}, b""

        with _Server(front) as registry:
            client = Registry(registry.host, credentials=lambda reg, repo: Credentials("u", "p", source="test"))
            assert client.get_blob("red/x", digest) == data
    assert [path for path, _ in registry.seen] == [f"/v2/red/x/blobs/{digest}"] * 2
    assert storage.seen == [(f"/blobs/{digest}?signature=abc", storage.seen[0][1])]
    assert "authorization" not in storage.seen[0][1]


def test_blob_content_must_match_its_digest() -> None:
    with _Server(lambda path, headers: (200, {}, b"not what was asked for")) as registry:
        client = Registry(registry.host, credentials=no_credentials)
        with pytest.raises(RegistryError, match="content does not match its digest"):
            client.get_blob("x/y", sha256_digest(b"the real content"))


def test_deep_json_from_a_registry_is_one_error_not_a_traceback() -> None:
    deep = b"[" * 100_000
    with pytest.raises(RegistryError, match=r"^manifest sha256:x is not JSON \(or nests too deep\)$"):
        Manifest(OCI_MANIFEST, deep, "sha256:x").json()
