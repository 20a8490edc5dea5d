"""Shared fixtures: real OTLP receivers and broken-collector stand-ins (see tests/otlp_receiver.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from step_tracer.otlp import json_codec
from step_tracer.span import Batch, Span
from tests.otlp_receiver import Blackhole, GrpcReceiver, HttpReceiver, TlsCA, free_port


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    with GrpcReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsCA:
    """Session-wide: minting keys is the slow part and nothing mutates the CA."""
    return TlsCA(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_http_receiver(tls_ca: TlsCA) -> Iterator[HttpReceiver]:
    with HttpReceiver(tls=tls_ca.server_tls()) as receiver:
        yield receiver


@pytest.fixture
def tls_grpc_receiver(tls_ca: TlsCA) -> Iterator[GrpcReceiver]:
    with GrpcReceiver(tls=tls_ca.server_tls()) as receiver:
        yield receiver


@pytest.fixture
def mtls_http_receiver(tls_ca: TlsCA) -> Iterator[HttpReceiver]:
    with HttpReceiver(tls=tls_ca.server_tls(require_client_cert=True)) as receiver:
        yield receiver


@pytest.fixture
def mtls_grpc_receiver(tls_ca: TlsCA) -> Iterator[GrpcReceiver]:
    with GrpcReceiver(tls=tls_ca.server_tls(require_client_cert=True)) as receiver:
        yield receiver


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    with Blackhole() as hole:
        yield hole


@pytest.fixture
def dead_port() -> int:
    return free_port()


class Wrapper:
    """Runs the installed `step-tracer` launcher as a step would, with a clean OTel environment.

    Spans go to a per-test OTLP JSON file unless a test points the wrapper elsewhere.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.executable = str(Path(sys.executable).parent / "step-tracer")
        self.file = tmp_path / "spans.jsonl"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEP_TRACER_", "TRACE"))}
        self.env["STEP_TRACER_FILE"] = str(self.file)
        self.env.pop("BAGGAGE", None)

    def argv(self, *args: str) -> list[str]:
        return [self.executable, "run", *args]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        merged = {**self.env, **(env or {})}
        return subprocess.run(self.argv(*args), env=merged, capture_output=True, timeout=timeout, **kwargs)

    def spans(self) -> list[Span]:
        if not self.file.exists():
            return []
        return [s for line in self.file.read_text().splitlines() for b in json_codec.decode(line) for s in b.spans]

    def batches(self) -> list[Batch]:
        return [b for line in self.file.read_text().splitlines() for b in json_codec.decode(line)]

    def only_span(self) -> Span:
        spans = self.spans()
        assert len(spans) == 1, spans
        return spans[0]


@pytest.fixture
def wrapper(tmp_path: Path) -> Wrapper:
    return Wrapper(tmp_path)


# Client settings from the developer's environment that silently override what a test configures:
# requests prefers REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE over a session's own `verify` (psf/requests#3829),
# and proxies would route 127.0.0.1 traffic elsewhere.
_CLIENT_ENV = (
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
)


@pytest.fixture
def clean_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop CA-bundle, proxy and OTEL_* variables that would override what a test client configures."""
    for name in [*_CLIENT_ENV, *(name for name in os.environ if name.startswith("OTEL_"))]:
        monkeypatch.delenv(name, raising=False)
