"""Every manifest we ship that the other cluster tests do not already apply, applied to the real API server as
`kubectl apply -k` would (the real kustomize, hack/manifests): deploy/collector (its generated ConfigMap, the
Deployment that mounts it, the Service) and Tekton's config-tracing and the sidecar's Secret beside it;
deploy/webhook/cert-manager with cert-manager's own CRDs installed (server-side dry run: validated and admitted,
not stored, so the webhook the other tests registered stays as it is)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.real.cluster import (
    REPO,
    WEBHOOK_NAMESPACE,
    Cluster,
    apply,
    cert_manager_crd_files,
    install_crds,
    kustomize,
    load_documents,
    namespace,
)

COLLECTOR = REPO / "deploy" / "collector"
CERT_MANAGER_OVERLAY = REPO / "deploy" / "webhook" / "cert-manager"


def by_kind(objects: list[Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for obj in objects:
        data = obj.to_dict() if hasattr(obj, "to_dict") else obj
        out[data["kind"]] = data
    return out


def test_deploy_collector_is_stored_as_kustomize_renders_it(cluster: Cluster) -> None:
    rendered = kustomize(COLLECTOR)
    stored = by_kind(apply(cluster.api_client(), rendered))
    assert set(stored) == {"Namespace", "ConfigMap", "Deployment", "Service"}
    config = stored["ConfigMap"]
    # configMapGenerator's name has its content hash; the Deployment mounts that name, not the plain one.
    assert config["metadata"]["name"].startswith("otel-collector-config-")
    assert yaml.safe_load(config["data"]["collector.yaml"]) == yaml.safe_load(
        (COLLECTOR / "collector.yaml").read_text()
    )
    volumes = stored["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert config["metadata"]["name"] in [(v.get("configMap") or {}).get("name") for v in volumes]
    assert {o["metadata"]["namespace"] for o in stored.values() if o["kind"] != "Namespace"} == {"observability"}


def test_config_tracing_and_the_sidecars_secret_are_stored_as_shipped(cluster: Cluster) -> None:
    """The two objects deploy/collector leaves out of its kustomization: Tekton's namespace, and a build one."""
    api = cluster.api_client()
    namespace(api, "tekton-pipelines")
    (tracing,) = load_documents(COLLECTOR / "config-tracing.yaml")
    stored = apply(api, [tracing])[0].to_dict()
    assert stored["data"] == tracing["data"] and stored["metadata"]["namespace"] == "tekton-pipelines"
    (secret,) = load_documents(COLLECTOR / "step-tracer-otlp.yaml")
    stored = apply(api, [secret], namespace=namespace(api, "a-build-namespace"))[0].to_dict()
    assert set(stored["data"]) == set(secret["stringData"])


def test_deploy_webhook_cert_manager_is_admitted_with_cert_managers_crds(cluster: Cluster) -> None:
    crds = install_crds(cluster, cert_manager_crd_files())
    assert {"certificates.cert-manager.io", "issuers.cert-manager.io"} <= set(crds)
    # The namespace must exist for a dry run of what goes in it (a dry-run Namespace is not stored).
    namespace(cluster.api_client(), WEBHOOK_NAMESPACE)
    rendered = kustomize(CERT_MANAGER_OVERLAY)
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds.count("Certificate") >= 1 and kinds.count("Issuer") >= 1
    admitted = by_kind(apply(cluster.api_client(), rendered, dry_run=True))
    webhook = admitted["MutatingWebhookConfiguration"]
    # The CA injector fills caBundle from this Certificate's Secret; the Service reference is kept.
    assert (
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "step-tracer-system/step-tracer-webhook"
    )
    assert webhook["webhooks"][0]["clientConfig"]["service"]["name"] == "step-tracer-webhook"
    certificate = admitted["Certificate"]
    assert certificate["spec"]["secretName"] == "step-tracer-webhook-tls"
    assert "step-tracer-webhook.step-tracer-system.svc" in certificate["spec"]["dnsNames"]
