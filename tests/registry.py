"""A real OCI registry for the tests (Debian's `docker-registry`, distribution 2.x) and what talks to it.

- `RegistryServer`: the registry as a subprocess on 127.0.0.1 (port chosen by the kernel, read back from
  its log), filesystem storage in a temporary directory; no auth, htpasswd Basic auth, or token auth
  through `TokenServer`, optionally with TLS.
- `TokenServer`: a small Docker token server (Basic-authenticated GET /token) that signs ES256 JWTs the
  registry verifies against a certificate bundle, the way Docker Hub or Quay hand out bearer tokens.
- `RawClient`: an independent minimal registry client (urllib) so fixtures and assertions do not depend
  on the client under test.
- `tkn_bundle`: builds a bundle byte for byte as `tkn bundle push` would, from Python's tarfile and
  hand-written JSON templates rather than from step_tracer.bundle.tkn.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import pytest

REGISTRY_BINARY = "/usr/bin/docker-registry"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
START_TIMEOUT = 30.0

Auth = Literal["none", "htpasswd", "token"]


def registry_binary() -> str:
    """The registry binary, or skip the test (it is a Debian package: docker-registry)."""
    path = shutil.which("docker-registry") or (REGISTRY_BINARY if os.access(REGISTRY_BINARY, os.X_OK) else None)
    if path is None:
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    return path


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for htpasswd (the registry accepts nothing else): libxcrypt via `crypt`, or htpasswd(1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            crypt = None  # type: ignore[assignment]
    if crypt is not None:
        salt = base64.b64encode(os.urandom(16), b"./").decode()[:22]
        hashed = crypt.crypt(password, f"$2b$05${salt}")
        if hashed and hashed.startswith("$2b$"):
            return hashed
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        out = subprocess.run([htpasswd, "-nbBC", "5", "u", password], capture_output=True, text=True, check=True)
        return out.stdout.strip().partition(":")[2]
    pytest.skip("no bcrypt implementation (crypt module or htpasswd) for the registry's htpasswd file")


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def docker_config(directory: Path, auths: Mapping[str, tuple[str, str]], **extra: Any) -> Path:
    """Write DIR/config.json as `docker login` does (base64 user:password in `auth`)."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = {host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()} for host, (u, p) in auths.items()}
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": entries, **extra}))
    return path


# Token server.


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_der: bytes) -> str:
    """The registry finds the token's signing key by libtrust's key ID of the certificate's public key."""
    encoded = base64.b32encode(hashlib.sha256(public_der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class TokenServer:
    """Docker's token protocol: GET /token?service=..&scope=.. with Basic auth -> {"token": JWT}."""

    SERVICE = "step-tracer-test-registry"
    ISSUER = "step-tracer-test-issuer"

    def __init__(
        self, directory: Path, users: Mapping[str, str], refresh_tokens: Mapping[str, str] | None = None
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.users = dict(users)
        self.refresh_tokens = dict(refresh_tokens or {})  # OAuth2 refresh token -> user
        self.requests: list[dict[str, Any]] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-signer")])
        now = time.time()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - 3600))
            .not_valid_after(_utc(now + 86400))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_id = libtrust_key_id(
            self._key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/token"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def sign(self, claims: Mapping[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        header = {"typ": "JWT", "alg": "ES256", "kid": self.key_id}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        return self._send(401, {"details": "incorrect username or password"})
                    user = name
                self._grant(user, query, "GET")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                user = server.refresh_tokens.get((form.get("refresh_token") or [""])[0])
                if form.get("grant_type") != ["refresh_token"] or user is None:
                    return self._send(401, {"error": "invalid_grant"})
                self._grant(user, form, "POST")

            def _grant(self, user: str | None, query: Mapping[str, list[str]], method: str) -> None:
                scopes = query.get("scope", [])
                server.requests.append(
                    {"user": user, "scopes": scopes, "service": query.get("service"), "method": method}
                )
                access = []
                for scope in scopes if user else []:
                    kind, _, rest = scope.partition(":")
                    repo, _, actions = rest.rpartition(":")
                    access.append({"type": kind, "name": repo, "actions": actions.split(",")})
                now = int(time.time())
                claims = {
                    "iss": server.ISSUER,
                    "sub": user or "",
                    "aud": server.SERVICE,
                    "exp": now + 600,
                    "nbf": now - 30,
                    "iat": now,
                    "jti": base64.b16encode(os.urandom(8)).decode(),
                    "access": access,
                }
                token = server.sign(claims)
                self._send(200, {"access_token": token} if method == "POST" else {"token": token, "expires_in": 600})

            def _send(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _utc(ts: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


# The registry.


@dataclass
class RegistryServer:
    """`docker-registry serve` on 127.0.0.1 with storage under `directory`."""

    directory: Path
    auth: Auth = "none"
    users: Mapping[str, str] = field(default_factory=lambda: {"alice": "wonderland"})
    tls: tuple[Path, Path] | None = None  # (certificate chain, key)
    cafile: Path | None = None  # to trust `tls`
    port: int = 0
    token_server: TokenServer | None = None
    refresh_tokens: Mapping[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def __enter__(self) -> Self:
        binary = registry_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        config: list[str] = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.directory / 'storage'}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            "  addr: 127.0.0.1:0",
            "  secret: step-tracer-test-secret",
        ]
        if self.tls:
            config += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.auth == "htpasswd":
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.users.items()))
            config += ["auth:", "  htpasswd:", "    realm: step-tracer-test", f"    path: {htpasswd}"]
        elif self.auth == "token":
            self.token_server = self._stack.enter_context(TokenServer(self.directory, self.users, self.refresh_tokens))
            config += [
                "auth:",
                "  token:",
                f"    realm: {self.token_server.realm}",
                f"    service: {TokenServer.SERVICE}",
                f"    issuer: {TokenServer.ISSUER}",
                f"    rootcertbundle: {self.token_server.cert_path}",
            ]
        config_path = self.directory / "config.yml"
        config_path.write_text("\n".join(config) + "\n")
        log_path = self.directory / "registry.log"
        log = self._stack.enter_context(open(log_path, "wb"))
        self._proc = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(log_path)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, log_path: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self._proc.returncode}: {log_path.read_text()[-2000:]}")
            if not self.port:
                m = re.search(r"listening on (?:127\.0\.0\.1|\[::\]|0\.0\.0\.0):(\d+)", log_path.read_text())
                if m:
                    self.port = int(m.group(1))
            if self.port:
                try:
                    self.raw().request("GET", "/v2/")
                    return
                except urllib.error.HTTPError as exc:
                    if exc.code == 401:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start in {START_TIMEOUT} s: {log_path.read_text()[-2000:]}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._stack.close()

    def raw(self, authorization: str | None = None) -> RawClient:
        """An independent client; with auth, it authenticates as the first user."""
        if authorization is None and self.auth != "none":
            user, password = next(iter(self.users.items()))
            authorization = basic(user, password)
        return RawClient(self.url, authorization, self.token_server, self.cafile)


class RawClient:
    """Just enough of the distribution API to seed and inspect the registry, written apart from the code
    under test. With a token server it fetches one all-powerful token per repository scope."""

    def __init__(
        self, url: str, authorization: str | None, token_server: TokenServer | None, cafile: Path | None = None
    ) -> None:
        self.url = url
        self.authorization = authorization
        self.token_server = token_server
        self.cafile = cafile

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        import ssl

        all_headers = dict(headers or {})
        auth = self._auth(path)
        if auth:
            all_headers["Authorization"] = auth
        url = path if "://" in path else self.url + path
        req = urllib.request.Request(url, data=body, headers=all_headers, method=method)
        context = ssl.create_default_context(cafile=str(self.cafile)) if self.cafile else None
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()

    def _auth(self, path: str) -> str | None:
        if self.token_server is None or self.authorization is None:
            return self.authorization
        m = re.match(r"(?:https?://[^/]+)?/v2/(.+?)/(?:manifests|blobs|tags)/", path)
        if not m:
            return None
        user = base64.b64decode(self.authorization[6:]).decode().partition(":")[0]
        now = int(time.time())
        claims = {
            "iss": TokenServer.ISSUER,
            "sub": user,
            "aud": TokenServer.SERVICE,
            "exp": now + 600,
            "nbf": now - 30,
            "iat": now,
            "jti": base64.b16encode(os.urandom(8)).decode(),
            "access": [{"type": "repository", "name": m.group(1), "actions": ["pull", "push", "delete"]}],
        }
        return f"Bearer {self.token_server.sign(claims)}"

    def put_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, headers, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"")
        location = urllib.parse.urljoin(self.url + "/", headers["location"])
        sep = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        return digest

    def put_manifest(self, repo: str, reference: str, raw: bytes, media_type: str) -> str:
        _, headers, _ = self.request("PUT", f"/v2/{repo}/manifests/{reference}", raw, {"Content-Type": media_type})
        return headers["docker-content-digest"]

    def get_manifest(self, repo: str, reference: str) -> tuple[str, bytes, str]:
        accept = ", ".join((DOCKER_MANIFEST, OCI_MANIFEST, OCI_INDEX))
        _, headers, body = self.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})
        return headers.get("content-type", ""), body, headers["docker-content-digest"]

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}")[2]

    def has_manifest(self, repo: str, reference: str) -> bool:
        try:
            self.request("HEAD", f"/v2/{repo}/manifests/{reference}", headers={"Accept": DOCKER_MANIFEST})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def tags(self, repo: str) -> list[str]:
        try:
            body = self.request("GET", f"/v2/{repo}/tags/list")[2]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return sorted(json.loads(body).get("tags") or [])


# tkn's bundle format, built independently of step_tracer.bundle.tkn.


def go_tar(name: str, content: bytes) -> bytes:
    """Go's archive/tar output for tkn's one-file layer (names up to 100 bytes): Python's USTAR header for the
    same fields, with Go's two differences: device numbers written as octal zeros (Python leaves them empty
    for regular files), and only the two zero end blocks (Python pads the archive to 10 KiB)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = len(content), 0o600, 0, 0, 0, "", ""
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    assert len(header) == 512
    header[329:345] = b"0000000\0" * 2
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + content + b"\0" * (-len(content) % 512) + b"\0" * 1024


def go_gzip(data: bytes, level: int = 1) -> bytes:
    """compress/gzip at BestSpeed: Go's 10-byte header (XFL 4, OS 255), then a deflate stream and trailer.

    Go's deflate encoder does not produce zlib's bytes; another `level` stands in for it where a test needs
    a layer whose compressed bytes differ from what step-tracer would write for the same tar."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = compressor.compress(data) + compressor.flush()
    trailer = zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff" + body + trailer


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class BuiltBundle:
    manifest: bytes
    config: bytes
    layers: list[bytes]
    contents: list[bytes]  # per layer, in manifest order

    @property
    def digest(self) -> str:
        return sha(self.manifest)


def tkn_object(data: Mapping[str, Any]) -> bytes:
    """What tkn stores for an object written in YAML: sigs.k8s.io/yaml -> Go json.Marshal (sorted, compact)."""
    return (
        json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .encode()
    )


def tkn_bundle(
    objects: Sequence[bytes], *, created: str = "1970-01-01T00:00:00Z", labels: str = "", level: int = 1
) -> BuiltBundle:
    """`tkn bundle push` for one file per object, written out from the rules in tektoncd/cli builder.go."""
    ordered = sorted(objects, key=lambda c: hashlib.sha256(c).digest())
    layers, descriptors, diff_ids = [], [], []
    for content in ordered:
        obj = json.loads(content)
        name = obj["metadata"]["name"]
        tar = go_tar(name, content)
        blob = go_gzip(tar, level)
        layers.append(blob)
        diff_ids.append(f'"{sha(tar)}"')
        descriptors.append(
            f'{{"mediaType":"{DOCKER_LAYER}","size":{len(blob)},"digest":"{sha(blob)}",'
            f'"annotations":{{"dev.tekton.image.apiVersion":"{obj["apiVersion"].split("/")[-1]}",'
            f'"dev.tekton.image.kind":"{obj["kind"].lower()}","dev.tekton.image.name":"{name}"}}}}'
        )
    history = ",".join('{"created":"0001-01-01T00:00:00Z"}' for _ in ordered)
    config = (
        f'{{"architecture":"","created":"{created}","history":[{history}],"os":"",'
        f'"rootfs":{{"type":"layers","diff_ids":[{",".join(diff_ids)}]}},"config":{{{labels}}}}}'
    ).encode()
    manifest = (
        f'{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",'
        f'"config":{{"mediaType":"{DOCKER_CONFIG}","size":{len(config)},"digest":"{sha(config)}"}},'
        f'"layers":[{",".join(descriptors)}]}}'
    ).encode()
    return BuiltBundle(manifest, config, layers, ordered)


def push_bundle(client: RawClient, repo: str, tag: str, bundle: BuiltBundle) -> str:
    for blob in [*bundle.layers, bundle.config]:
        client.put_blob(repo, blob)
    return client.put_manifest(repo, tag, bundle.manifest, DOCKER_MANIFEST)


@dataclass
class PulledBundle:
    media_type: str
    manifest: dict[str, Any]
    raw_manifest: bytes
    digest: str
    config: dict[str, Any]
    raw_config: bytes
    blobs: list[bytes]
    tars: list[bytes]
    objects: list[dict[str, Any]]
    contents: list[bytes]


def pull_bundle(client: RawClient, repo: str, reference: str) -> PulledBundle:
    media_type, raw, digest = client.get_manifest(repo, reference)
    manifest = json.loads(raw)
    raw_config = client.get_blob(repo, manifest["config"]["digest"])
    blobs = [client.get_blob(repo, layer["digest"]) for layer in manifest["layers"]]
    tars = [gzip.decompress(b) for b in blobs]
    contents = []
    for tar in tars:
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            members = archive.getmembers()
            assert len(members) == 1
            extracted = archive.extractfile(members[0])
            assert extracted is not None
            contents.append(extracted.read())
    return PulledBundle(
        media_type,
        manifest,
        raw,
        digest,
        json.loads(raw_config),
        raw_config,
        blobs,
        tars,
        [_load(c) for c in contents],
        contents,
    )


def _load(content: bytes) -> dict[str, Any]:
    """An object's bytes: JSON as tkn writes it, or YAML as other tools may."""
    from ruamel.yaml import YAML

    try:
        data = json.loads(content)
    except ValueError:
        data = YAML(typ="safe", pure=True).load(content.decode())
    assert isinstance(data, dict)
    return data


def push_image(
    client: RawClient,
    repo: str,
    tag: str,
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    os_name: str = "linux",
    arch: str = "amd64",
    oci: bool = False,
) -> tuple[str, int]:
    """A minimal image (config + empty layer list) to look an ENTRYPOINT up in. Returns (digest, size)."""
    inner: dict[str, Any] = {}
    if entrypoint is not None:
        inner["Entrypoint"] = entrypoint
    if cmd is not None:
        inner["Cmd"] = cmd
    config = json.dumps(
        {"architecture": arch, "os": os_name, "config": inner, "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    client.put_blob(repo, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "size": len(config), "digest": sha(config)},
            "layers": [],
        }
    ).encode()
    digest = client.put_manifest(repo, tag, manifest, OCI_MANIFEST if oci else DOCKER_MANIFEST)
    return digest, len(manifest)


def push_index(
    client: RawClient,
    repo: str,
    tag: str,
    platforms: Mapping[str, tuple[str, int]],
    attestation: tuple[str, int] | None = None,
) -> str:
    """An OCI index over images already pushed: {"os/arch": (digest, size)}; `attestation` adds an
    "unknown/unknown" entry as buildkit does for provenance (the registry wants it to exist too)."""
    entries = dict(platforms)
    if attestation is not None:
        entries["unknown/unknown"] = attestation
    manifests = [
        {
            "mediaType": DOCKER_MANIFEST,
            "digest": digest,
            "size": size,
            "platform": {"os": plat.split("/")[0], "architecture": plat.split("/")[1]},
        }
        for plat, (digest, size) in entries.items()
    ]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    return client.put_manifest(repo, tag, index, OCI_INDEX)


@contextlib.contextmanager
def running(directory: Path, **kwargs: Any) -> Iterator[RegistryServer]:
    with RegistryServer(directory, **kwargs) as server:
        yield server
