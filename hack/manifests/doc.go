// Package manifests pins the tools that render and check the manifests we ship (deploy/, tekton/): kustomize, as
// a tool (see go.mod), and cert-manager, whose module's deploy/crds the tests install before applying
// deploy/webhook/cert-manager. The blank import keeps cert-manager in go.mod and go.sum; nothing of it is run.
package manifests

import _ "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
