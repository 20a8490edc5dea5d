"""`step-tracer bundle`: instrument Tekton bundles in OCI registries.

Modules: reference (image references), auth (docker/podman credentials), registry (a minimal OCI
distribution client), tkn (tkn's bundle format), resolve (image ENTRYPOINT lookup for `inject`),
patch (pull, patch, push), progress, cli. Nothing is imported here so that `step_tracer.bundle.resolve`
can be used without the rest.
"""
