"""`step-tracer webhook`: a mutating admission webhook that instruments every Tekton TaskRun pod at creation.

The zero-code path: no Task is edited. Tekton's pod builder has already turned every step into
`/tekton/bin/entrypoint ... -entrypoint CMD -- ARGS`; the webhook slips the wrapper in there and adds the same
volumes, mounts and sidecar the file patcher (`step_tracer.inject`) adds to a Task.
"""
