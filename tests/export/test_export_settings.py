"""Settings.from_env against the OpenTelemetry SDK environment variable specification."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from step_tracer import __version__
from step_tracer.export.settings import Settings, redact


def load(**env: str) -> tuple[Settings, list[str]]:
    warnings: list[str] = []
    return Settings.from_env(env, warnings.append), warnings


def test_defaults_without_any_variable() -> None:
    settings, warnings = load(HOME="/home/u")
    assert warnings == []
    assert not settings.disabled
    assert settings.exporters == ("file",)
    assert settings.protocol == "http/protobuf"
    assert settings.endpoint == "http://localhost:4318/v1/traces"
    assert settings.headers == {}
    assert settings.timeout == 10.0
    assert settings.certificate == settings.client_key == settings.client_certificate == ""
    assert not settings.insecure
    assert settings.compression == "none"
    assert settings.resource == {
        "service.name": "step-tracer",
        "telemetry.sdk.name": "step-tracer",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
    }
    assert settings.file_path == "/home/u/.local/state/step-tracer/spans.jsonl"
    assert settings.deadline == 2.0


@pytest.mark.parametrize("value", ["true", "TRUE", "True", " true "])
def test_sdk_disabled_is_case_insensitive(value: str) -> None:
    assert load(OTEL_SDK_DISABLED=value)[0].disabled


@pytest.mark.parametrize(("value", "warned"), [("false", False), ("FALSE", False), ("", False), ("1", True)])
def test_sdk_disabled_other_values_mean_enabled(value: str, warned: bool) -> None:
    settings, warnings = load(OTEL_SDK_DISABLED=value)
    assert not settings.disabled
    assert len(warnings) == warned
    if warned:
        assert "OTEL_SDK_DISABLED" in warnings[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("file",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, ("file",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": " OTLP , file,otlp"}, ("otlp", "file")),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "file", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ("file",)),
        ({"OTEL_TRACES_EXPORTER": ""}, ("file",)),
    ],
)
def test_exporters(env: dict[str, str], expected: tuple[str, ...]) -> None:
    settings, warnings = load(**env)
    assert settings.exporters == expected
    assert warnings == []


def test_unknown_exporters_warn_once_each_and_are_skipped() -> None:
    settings, warnings = load(OTEL_TRACES_EXPORTER="jaeger,console,zipkin")
    assert settings.exporters == ("console",)
    assert len(warnings) == 2
    assert "'jaeger'" in warnings[0] and "'zipkin'" in warnings[1]


def test_only_unknown_exporters_fall_back_to_the_default() -> None:
    settings, warnings = load(OTEL_TRACES_EXPORTER="jaeger", OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318")
    assert settings.exporters == ("otlp",)
    assert len(warnings) == 1


def test_none_with_other_exporters_wins_with_a_warning() -> None:
    settings, warnings = load(OTEL_TRACES_EXPORTER="none,otlp")
    assert settings.exporters == ()
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "HTTP/JSON"}, "http/json"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "http/json"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": " "}, "grpc"),
    ],
)
def test_protocol(env: dict[str, str], expected: str) -> None:
    settings, warnings = load(**env)
    assert settings.protocol == expected
    assert warnings == []


def test_invalid_protocol_warns_and_uses_http_protobuf() -> None:
    settings, warnings = load(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/thrift")
    assert settings.protocol == "http/protobuf"
    assert len(warnings) == 1
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" in warnings[0] and warnings[0].startswith("ignoring ")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw.example/otlp"}, "https://gw.example/otlp/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw.example/otlp/"}, "https://gw.example/otlp/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}, "http://c:4318"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom/"}, "http://c:4318/custom/"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:2/x"},
            "http://t:2/x",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1]:4318"}, "http://[::1]:4318/v1/traces"),
        # The signal path goes on the path, before the query (some gateways take a tenant or key there).
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw.example/otlp?tenant=a"},
            "https://gw.example/otlp/v1/traces?tenant=a",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw.example/?k=v&w=x"}, "https://gw.example/v1/traces?k=v&w=x"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318?x=1"}, "http://c:4318/v1/traces?x=1"),
    ],
)
def test_http_endpoint_resolution(env: dict[str, str], expected: str) -> None:
    settings, warnings = load(**env)
    assert settings.endpoint == expected
    assert warnings == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://localhost:4317"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "http://collector:4317"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "collector:4317"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:4317"}, "https://t:4317"),
    ],
)
def test_grpc_endpoint_resolution(env: dict[str, str], expected: str) -> None:
    settings, warnings = load(OTEL_EXPORTER_OTLP_PROTOCOL="grpc", **env)
    assert settings.endpoint == expected
    assert warnings == []


@pytest.mark.parametrize(
    ("endpoint", "insecure", "expected"),
    [
        ("http://collector:4317", "", ("collector:4317", False)),
        ("https://collector:4317", "", ("collector:4317", True)),
        ("https://collector:4317", "true", ("collector:4317", True)),
        ("http://collector:4317", "false", ("collector:4317", False)),
        ("collector:4317", "", ("collector:4317", True)),
        ("collector:4317", "true", ("collector:4317", False)),
        ("HTTPS://user:pw@collector:4317/ignored", "", ("collector:4317", True)),
    ],
)
def test_grpc_target_and_tls(endpoint: str, insecure: str, expected: tuple[str, bool]) -> None:
    settings, _ = load(
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_INSECURE=insecure,
    )
    assert settings.grpc_target() == expected


@pytest.mark.parametrize(
    "endpoint", ["collector:4318", "ftp://c/x", "http://", "http://c:notaport", "http://c:70000", "http://[::1"]
)
def test_invalid_http_endpoint_warns_and_uses_the_default(endpoint: str) -> None:
    settings, warnings = load(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint)
    assert settings.endpoint == "http://localhost:4318/v1/traces"
    assert len(warnings) == 1
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in warnings[0]
    assert settings.exporters == ("otlp",), "an endpoint that is set still selects otlp"


def test_endpoint_warning_hides_credentials() -> None:
    _, warnings = load(OTEL_EXPORTER_OTLP_ENDPOINT="ftp://user:s3cret@c/x?token=s3cret")
    assert len(warnings) == 1
    assert "s3cret" not in warnings[0]


def test_headers_merge_trim_and_percent_decode() -> None:
    settings, warnings = load(
        OTEL_EXPORTER_OTLP_HEADERS=" Authorization = Basic%20abc%3D%3D , X-Tenant=generic,x-shared=1",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="x-tenant=traces,X-Extra=a%2Cb%3Dc ,,",
    )
    assert warnings == []
    assert settings.headers == {
        "Authorization": "Basic abc==",
        "x-shared": "1",
        "x-tenant": "traces",
        "X-Extra": "a,b=c",
    }


def test_header_values_may_contain_equals_signs() -> None:
    settings, _ = load(OTEL_EXPORTER_OTLP_HEADERS="api-key=a=b==")
    assert settings.headers == {"api-key": "a=b=="}


@pytest.mark.parametrize(
    "entry",
    [
        "Bearer-S3CRET",
        "=S3CRET",
        "bad key=S3CRET",
        "k=S3CRET%FF%FE",
        "k=S3CRET%0Abreak",
        "k\u00e9=S3CRET",
        "k=S3CRET-caf%C3%A9",
    ],
)
def test_malformed_header_entries_are_skipped_with_one_warning_that_hides_the_value(entry: str) -> None:
    settings, warnings = load(OTEL_EXPORTER_OTLP_HEADERS=f"good=1,{entry},also=2")
    assert settings.headers == {"good": "1", "also": "2"}
    assert len(warnings) == 1
    assert "OTEL_EXPORTER_OTLP_HEADERS" in warnings[0] and "entry 2" in warnings[0]
    assert "S3CRET" not in warnings[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "500"}, 0.5),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "30000"}, 30.0),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "1000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "250"}, 0.25),
    ],
)
def test_timeout_is_milliseconds(env: dict[str, str], expected: float) -> None:
    settings, warnings = load(**env)
    assert settings.timeout == expected
    assert warnings == []


@pytest.mark.parametrize("value", ["10s", "-5", "0", "nan", "inf"])
def test_invalid_timeout_warns_and_uses_ten_seconds(value: str) -> None:
    settings, warnings = load(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=value)
    assert settings.timeout == 10.0
    assert len(warnings) == 1
    assert "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" in warnings[0]


def test_tls_files_prefer_the_traces_variables() -> None:
    settings, warnings = load(
        OTEL_EXPORTER_OTLP_CERTIFICATE="/generic/ca.pem",
        OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE="/traces/ca.pem",
        OTEL_EXPORTER_OTLP_CLIENT_KEY="/generic/client.key",
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE="/generic/client.pem",
        OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE="/traces/client.pem",
    )
    assert warnings == []
    assert settings.certificate == "/traces/ca.pem"
    assert settings.client_key == "/generic/client.key"
    assert settings.client_certificate == "/traces/client.pem"


@pytest.mark.parametrize(
    ("env", "expected", "warned"),
    [
        ({"OTEL_EXPORTER_OTLP_INSECURE": "true"}, True, 0),
        ({"OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false"}, False, 0),
        ({"OTEL_EXPORTER_OTLP_TRACES_INSECURE": "yes"}, False, 1),
    ],
)
def test_insecure(env: dict[str, str], expected: bool, warned: int) -> None:
    settings, warnings = load(**env)
    assert settings.insecure is expected
    assert len(warnings) == warned


@pytest.mark.parametrize(
    ("env", "expected", "warned"),
    [
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}, "gzip", 0),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none"}, "none", 0),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP"}, "gzip", 0),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "none", 1),
    ],
)
def test_compression(env: dict[str, str], expected: str, warned: int) -> None:
    settings, warnings = load(**env)
    assert settings.compression == expected
    assert len(warnings) == warned


def test_resource_attributes_then_service_name() -> None:
    settings, warnings = load(
        OTEL_RESOURCE_ATTRIBUTES="service.name=from-attrs, k8s.pod.name = pod-1 ,note=a%2Cb%3Dc%20%E2%9C%93",
        OTEL_SERVICE_NAME="tekton-steps",
    )
    assert warnings == []
    assert settings.resource["service.name"] == "tekton-steps"
    assert settings.resource["k8s.pod.name"] == "pod-1"
    assert settings.resource["note"] == "a,b=c ✓"
    assert settings.resource["telemetry.sdk.name"] == "step-tracer"


def test_service_name_from_resource_attributes_without_otel_service_name() -> None:
    settings, _ = load(OTEL_RESOURCE_ATTRIBUTES="service.name=builds")
    assert settings.resource["service.name"] == "builds"


@pytest.mark.parametrize("value", ["a=1,broken,b=2", "=x", "a=%FF"])
def test_malformed_resource_attributes_are_discarded_whole_with_one_warning(value: str) -> None:
    settings, warnings = load(OTEL_RESOURCE_ATTRIBUTES=value, OTEL_SERVICE_NAME="svc")
    assert len(warnings) == 1
    assert "OTEL_RESOURCE_ATTRIBUTES" in warnings[0]
    assert "a" not in settings.resource and "b" not in settings.resource
    assert settings.resource["service.name"] == "svc"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STEP_TRACER_FILE": "/x/spans.jsonl", "HOME": "/home/u"}, "/x/spans.jsonl"),
        ({"XDG_STATE_HOME": "/state/", "HOME": "/home/u"}, "/state/step-tracer/spans.jsonl"),
        ({"XDG_STATE_HOME": "relative", "HOME": "/home/u"}, "/home/u/.local/state/step-tracer/spans.jsonl"),
        ({"HOME": "/home/u/"}, "/home/u/.local/state/step-tracer/spans.jsonl"),
        ({}, f"/tmp/step-tracer-{os.getuid()}/spans.jsonl"),
    ],
)
def test_file_path(env: dict[str, str], expected: str) -> None:
    assert load(**env)[0].file_path == expected


@pytest.mark.parametrize(
    ("value", "expected", "warned"), [("0.5", 0.5, 0), ("10", 10.0, 0), ("soon", 2.0, 1), ("-1", 2.0, 1)]
)
def test_deadline(value: str, expected: float, warned: int) -> None:
    settings, warnings = load(STEP_TRACER_EXPORT_DEADLINE=value)
    assert settings.deadline == expected
    assert len(warnings) == warned


def test_every_bad_variable_warns_exactly_once_and_nothing_raises() -> None:
    settings, warnings = load(
        OTEL_SDK_DISABLED="maybe",
        OTEL_TRACES_EXPORTER="bogus",
        OTEL_EXPORTER_OTLP_PROTOCOL="carrier-pigeon",
        OTEL_EXPORTER_OTLP_ENDPOINT="nowhere",
        OTEL_EXPORTER_OTLP_HEADERS="oops",
        OTEL_EXPORTER_OTLP_TIMEOUT="later",
        OTEL_EXPORTER_OTLP_INSECURE="perhaps",
        OTEL_EXPORTER_OTLP_COMPRESSION="lz4",
        OTEL_RESOURCE_ATTRIBUTES="no-equals",
        STEP_TRACER_EXPORT_DEADLINE="never",
    )
    assert len(warnings) == 10, warnings
    assert all("step-tracer" not in w and "\n" not in w for w in warnings)  # callers add the prefix once
    assert settings.protocol == "http/protobuf"
    assert settings.endpoint == "http://localhost:4318/v1/traces"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318/v1/traces"),
        ("https://user:pw@host/v1/traces", "https://***@host/v1/traces"),
        ("https://host/v1/traces?api_key=s", "https://host/v1/traces?***"),
        ("host:4317", "host:4317"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_repr_shows_no_credentials() -> None:
    settings, _ = load(
        OTEL_EXPORTER_OTLP_ENDPOINT="https://tenant:s3cr3t-pw@gw.example/otlp?api_key=s3cr3t-key",
        OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20s3cr3t-token,x-scope=s3cr3t-scope",
    )
    assert settings.endpoint == "https://tenant:s3cr3t-pw@gw.example/otlp/v1/traces?api_key=s3cr3t-key"
    text = repr(settings)
    assert "s3cr3t" not in text and "tenant" not in text and "Authorization" not in text, text
    assert "endpoint='https://***@gw.example/otlp/v1/traces?***'" in text and "headers=<2 set>" in text


def test_hot_path_modules_import_nothing_expensive() -> None:
    """Beyond what the span model already costs, exporting to a file must not import re, typing, json, ...

    http.client, ssl and grpc are for the network thread only.
    """
    code = (
        "import sys; import step_tracer.span, step_tracer.otlp.json_codec; before = set(sys.modules); "
        "import step_tracer.export, step_tracer.export.settings, step_tracer.export.files, "
        "step_tracer.otlp.proto_codec; "
        "s = step_tracer.export.settings.Settings.from_env({'OTEL_EXPORTER_OTLP_HEADERS': 'a=b'}, print); "
        "print(sorted(m for m in ('re', 'typing', 'urllib.parse', 'json', 'threading', 'http.client', 'ssl', "
        "'grpc', 'dataclasses', 'enum', 'logging', 'random', 'opentelemetry', 'google.protobuf') "
        "if m in sys.modules and m not in before))"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
