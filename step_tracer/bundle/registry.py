"""A minimal OCI distribution client on http.client: manifests, blobs, monolithic uploads, auth.

Only what bundle patching and entrypoint lookup need, without a new dependency. Auth follows the
registry's challenge: Basic with the stored credentials, or Bearer tokens from the challenge's realm
(anonymous, Basic-authenticated, or an OAuth2 refresh token), cached per scope. Plain HTTP for
loopback registries (as docker and go-containerregistry assume) or when asked for; HTTPS otherwise.
Redirects (blob storage often answers with one) are followed for reads, without the Authorization
header once the host changes.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from step_tracer import __version__, problem
from step_tracer.bundle.auth import Credentials, CredentialsError, auth_files, find_credentials
from step_tracer.bundle.reference import DOCKER_HUB, DOCKER_HUB_API, is_loopback

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEXES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
MANIFEST_TYPES = (*IMAGE_MANIFESTS, *INDEXES)

MAX_MANIFEST_BYTES = 4 << 20  # what distribution accepts
MAX_BLOB_BYTES = 64 << 20  # bundle layers and image configs are tiny; a bound keeps a bad registry harmless
MAX_CONFIG_BYTES = 8 << 20  # an image config: what Tekton's entrypoint lookup and `bundle patch` read of one
DEFAULT_TIMEOUT = 60.0
MAX_REDIRECTS = 5

CredentialLookup = Callable[[str, str], "Credentials | None"]


class RegistryError(Exception):
    """A registry request failed; the message says which registry and why, in one line."""


class AuthError(RegistryError):
    """The registry refused our credentials (or wants some and we have none)."""


class NotFoundError(RegistryError):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


@dataclass(frozen=True)
class Manifest:
    media_type: str
    raw: bytes
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.raw)
        except (ValueError, RecursionError):
            raise RegistryError(f"manifest {self.digest} is not JSON (or nests too deep)") from None
        if not isinstance(data, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return data


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_CHALLENGE_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """("bearer"|"basic"|..., params) of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def _error_text(body: bytes) -> str:
    """The registry's own words: the `errors` list of the distribution spec, else the start of the body."""
    try:
        data = json.loads(body)
        errors = data.get("errors") if isinstance(data, dict) else None
        if isinstance(errors, list) and errors:
            return "; ".join(
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)
            )
    except (ValueError, RecursionError):
        pass
    text = body[:200].decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""


class Registry:
    """One registry host. Not thread-safe (token cache); make one per thread if needed."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        credentials: CredentialLookup | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        scheme: str | None = None,
    ) -> None:
        """`insecure`: plain HTTP (also the default for loopback registries); `scheme` overrides both."""
        self.registry = registry
        self.host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.scheme = scheme or ("http" if insecure or is_loopback(registry) else "https")
        self.timeout = timeout
        self._lookup: CredentialLookup = credentials or (lambda reg, repo: find_credentials(reg, repo))
        self._ssl = ssl_context
        self._creds: dict[str, Credentials | None] = {}
        self._tokens: dict[tuple[str, ...], str] = {}
        self._basic: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    # Public operations.

    def get_manifest(self, repository: str, reference: str, accept: Iterable[str] = MANIFEST_TYPES) -> Manifest:
        resp = self._request(
            "GET",
            repository,
            f"/v2/{repository}/manifests/{reference}",
            actions="pull",
            headers={"Accept": ", ".join(accept)},
            ok=(200,),
            max_bytes=MAX_MANIFEST_BYTES,
            what=f"manifest {self.registry}/{repository}:{reference}",
        )
        digest = sha256_digest(resp.body)
        if ":" in reference:
            _check_digest(reference, resp.body, f"manifest {self.registry}/{repository}@{reference}")
            digest = reference
        media_type = resp.headers.get("content-type", "").partition(";")[0].strip()
        try:
            declared = json.loads(resp.body).get("mediaType")
        except (ValueError, AttributeError, RecursionError):
            raise RegistryError(f"manifest {self.registry}/{repository}:{reference} is not JSON") from None
        if isinstance(declared, str) and declared:
            media_type = declared
        return Manifest(media_type, resp.body, digest)

    def get_blob(self, repository: str, digest: str, max_bytes: int = MAX_BLOB_BYTES) -> bytes:
        what = f"blob {self.registry}/{repository}@{digest}"
        resp = self._request(
            "GET", repository, f"/v2/{repository}/blobs/{digest}", actions="pull", max_bytes=max_bytes, what=what
        )
        _check_digest(digest, resp.body, what)
        return resp.body

    def blob_exists(self, repository: str, digest: str, actions: str = "pull") -> bool:
        resp = self._request(
            "HEAD",
            repository,
            f"/v2/{repository}/blobs/{digest}",
            actions=actions,
            ok=(200, 404),
            what=f"blob {self.registry}/{repository}@{digest}",
        )
        return resp.status == 200

    def push_blob(self, repository: str, data: bytes, *, mount_from: str | None = None) -> str:
        """Upload `data` unless the repository has it; tries a cross-repository mount from `mount_from` first."""
        digest = sha256_digest(data)
        if self.blob_exists(repository, digest, actions="pull,push"):
            return digest
        uploads = f"/v2/{repository}/blobs/uploads/"
        what = f"upload to {self.registry}/{repository}"
        location = None
        if mount_from and mount_from != repository:
            query = urllib.parse.urlencode({"mount": digest, "from": mount_from})
            resp = self._request(
                "POST",
                repository,
                f"{uploads}?{query}",
                actions="pull,push",
                extra_scopes=(f"repository:{mount_from}:pull",),
                headers={"Content-Length": "0"},
                body=b"",
                ok=(201, 202),
                what=what,
            )
            if resp.status == 201:
                return digest
            location = resp.headers.get("location")
        if not location:
            resp = self._request(
                "POST",
                repository,
                uploads,
                actions="pull,push",
                headers={"Content-Length": "0"},
                body=b"",
                ok=(202,),
                what=what,
            )
            location = resp.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        url = urllib.parse.urljoin(self.base_url + uploads, location)
        sep = "&" if urllib.parse.urlsplit(url).query else "?"
        self._request(
            "PUT",
            repository,
            f"{url}{sep}{urllib.parse.urlencode({'digest': digest})}",
            actions="pull,push",
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
            body=data,
            ok=(201,),
            what=what,
        )
        return digest

    def put_manifest(self, repository: str, tag: str, raw: bytes, media_type: str) -> str:
        digest = sha256_digest(raw)
        what = f"manifest push to {self.registry}/{repository}:{tag}"
        resp = self._request(
            "PUT",
            repository,
            f"/v2/{repository}/manifests/{tag}",
            actions="pull,push",
            headers={"Content-Type": media_type, "Content-Length": str(len(raw))},
            body=raw,
            ok=(201,),
            what=what,
        )
        answered = resp.headers.get("docker-content-digest")
        if answered and answered != digest:
            raise RegistryError(f"{what}: the registry stored {answered}, expected {digest}")
        return digest

    # Transport and auth.

    def _credentials(self, repository: str) -> Credentials | None:
        if repository not in self._creds:
            try:
                self._creds[repository] = self._lookup(self.registry, repository)
            except CredentialsError as exc:
                raise AuthError(f"{self.registry}: {exc}") from None
        return self._creds[repository]

    def _request(
        self,
        method: str,
        repository: str,
        target: str,
        *,
        actions: str,
        what: str,
        extra_scopes: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        max_bytes: int = MAX_MANIFEST_BYTES,
    ) -> Response:
        url = target if "://" in target else self.base_url + target
        scopes = (f"repository:{repository}:{actions}", *extra_scopes)
        resp = None
        for attempt in range(2):
            all_headers = {"User-Agent": f"step-tracer/{__version__}", **(headers or {})}
            auth = self._auth_header(scopes)
            if auth:
                all_headers["Authorization"] = auth
            resp = self._send(method, url, all_headers, body, max_bytes, what)
            if resp.status != 401 or attempt:
                break
            self._authenticate(resp, scopes, repository, what)
        assert resp is not None
        if resp.status in ok:
            return resp
        detail = _error_text(resp.body)
        if resp.status == 401:
            raise AuthError(self._auth_failure(repository, what, detail))
        if resp.status == 403:
            raise AuthError(f"{what}: access denied{': ' + detail if detail else ''}{self._creds_note(repository)}")
        if resp.status == 404:
            raise NotFoundError(f"{what}: not found{': ' + detail if detail else ''}")
        raise RegistryError(f"{what}: HTTP {resp.status}{': ' + detail if detail else ''}")

    def _creds_note(self, repository: str) -> str:
        creds = self._creds.get(repository)
        return f" (credentials from {creds.source})" if creds else ""

    def _auth_failure(self, repository: str, what: str, detail: str) -> str:
        creds = self._creds.get(repository)
        if creds is None:
            files = ", ".join(str(p) for p in auth_files())
            hint = f"no credentials for {self.registry} found (looked in {files})"
        else:
            hint = f"the registry rejected the credentials from {creds.source}"
        return f"{what}: authentication failed: {hint}{': ' + detail if detail else ''}"

    def _auth_header(self, scopes: tuple[str, ...]) -> str | None:
        token = self._tokens.get(scopes)
        if token:
            return f"Bearer {token}"
        return self._basic

    def _authenticate(self, resp: Response, scopes: tuple[str, ...], repository: str, what: str) -> None:
        header = resp.headers.get("www-authenticate", "")
        scheme, params = parse_challenge(header)
        creds = self._credentials(repository)
        if scheme == "basic":
            if creds is None or not (creds.username or creds.password):
                return  # the retry fails with 401 and _auth_failure explains
            pair = f"{creds.username}:{creds.password}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
        elif scheme == "bearer":
            if creds is not None and creds.registry_token:
                self._tokens[scopes] = creds.registry_token
                return
            realm = params.get("realm")
            if not realm:
                raise RegistryError(f"{what}: the registry's bearer challenge names no realm")
            wanted = list(scopes)
            asked = params.get("scope", "")
            if asked and not _covered(asked, wanted):
                wanted.append(asked)
            self._tokens[scopes] = self._fetch_token(realm, params.get("service", ""), wanted, creds, what)
        else:
            raise RegistryError(f"{what}: unsupported authentication scheme {scheme or header!r}")

    def _fetch_token(self, realm: str, service: str, scopes: list[str], creds: Credentials | None, what: str) -> str:
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"{what}: bad token realm {realm!r}")
        headers = {"User-Agent": f"step-tracer/{__version__}"}
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "step-tracer"}
            if service:
                form["service"] = service
            body = urllib.parse.urlencode([*form.items(), *(("scope", s) for s in scopes)]).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self._send("POST", realm, headers, body, MAX_MANIFEST_BYTES, what)
        else:
            query = urllib.parse.urlencode(
                [*((("service", service),) if service else ()), *(("scope", s) for s in scopes)]
            )
            if creds is not None and (creds.username or creds.password):
                pair = f"{creds.username}:{creds.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            sep = "&" if urllib.parse.urlsplit(realm).query else "?"
            resp = self._send("GET", f"{realm}{sep}{query}", headers, None, MAX_MANIFEST_BYTES, what)
        if resp.status in (401, 403):
            if creds is None:
                files = ", ".join(str(p) for p in auth_files())
                hint = f"no credentials for {self.registry} found (looked in {files})"
            else:
                hint = f"the token server rejected the credentials from {creds.source}"
            detail = _error_text(resp.body)
            raise AuthError(f"{what}: authentication failed: {hint}{': ' + detail if detail else ''}")
        if resp.status != 200:
            raise RegistryError(f"{what}: token server {realm} answered HTTP {resp.status}: {_error_text(resp.body)}")
        try:
            data = json.loads(resp.body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: token server {realm} sent no token")
        return token

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        max_bytes: int,
        what: str,
    ) -> Response:
        current = dict(headers)
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise RegistryError(f"{what}: bad URL {url!r}")
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                context = self._ssl or ssl.create_default_context()
                conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=context)
            else:
                conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request(method, path, body=body, headers=current)
                raw = conn.getresponse()
                data = b"" if method == "HEAD" else raw.read(max_bytes + 1)
                status = raw.status
                resp_headers = {k.lower(): v for k, v in raw.getheaders()}
            except (OSError, http.client.HTTPException) as exc:
                why = problem.reason(exc)
                raise RegistryError(f"{what}: cannot reach {parts.scheme}://{parts.netloc}: {why}") from None
            finally:
                conn.close()
            if len(data) > max_bytes:
                raise RegistryError(f"{what}: response larger than {max_bytes} bytes")
            location = resp_headers.get("location")
            if status in (301, 302, 303, 307, 308) and location and method in ("GET", "HEAD"):
                url = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(url).netloc != origin:
                    current.pop("Authorization", None)
                continue
            return Response(status, resp_headers, data, url)
        raise RegistryError(f"{what}: too many redirects")


def _covered(scope: str, scopes: Iterable[str]) -> bool:
    """Whether `scope` ("repository:NAME:ACTIONS") asks for nothing beyond one of `scopes`."""
    kind_name, _, actions = scope.rpartition(":")
    for ours in scopes:
        our_kind_name, _, our_actions = ours.rpartition(":")
        if our_kind_name == kind_name and set(actions.split(",")) <= set(our_actions.split(",")):
            return True
    return False


def _check_digest(digest: str, data: bytes, what: str) -> None:
    algorithm, _, expected = digest.partition(":")
    if algorithm != "sha256":
        raise RegistryError(f"{what}: unsupported digest algorithm {algorithm!r}")
    if hashlib.sha256(data).hexdigest() != expected.lower():
        raise RegistryError(f"{what}: content does not match its digest")
