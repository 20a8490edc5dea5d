// Command jsonpatch applies a mutating admission webhook's JSONPatch to a Pod the way kube-apiserver's mutating
// admission does: the patch is decoded and applied to the Pod's JSON with gopkg.in/evanphx/json-patch.v4 (the
// library the API server uses), and the result is decoded into a v1 Pod, so a patch that the API server would
// refuse or whose fields it would drop fails or loses them here too. Until the tests run a real API server,
// this is how the zero-code path's pods are made.
//
//	jsonpatch POD.json PATCH.json > PATCHED.json
package main

import (
	"encoding/json"
	"fmt"
	"os"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: jsonpatch POD.json PATCH.json")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "jsonpatch:", err)
		os.Exit(1)
	}
}

func run(podPath, patchPath string) error {
	podJSON, err := os.ReadFile(podPath)
	if err != nil {
		return err
	}
	patchJSON, err := os.ReadFile(patchPath)
	if err != nil {
		return err
	}
	patch, err := jsonpatch.DecodePatch(patchJSON)
	if err != nil {
		return fmt.Errorf("decoding the patch: %w", err)
	}
	patched, err := patch.Apply(podJSON)
	if err != nil {
		return fmt.Errorf("applying the patch: %w", err)
	}
	pod := &corev1.Pod{}
	// The API server's JSON serializer is not strict for built-in types: unknown fields are dropped.
	if _, _, err := scheme.Codecs.UniversalDeserializer().Decode(withKind(patched), nil, pod); err != nil {
		return fmt.Errorf("decoding the patched Pod: %w", err)
	}
	out, err := json.MarshalIndent(pod, "", "  ")
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}

// withKind sets apiVersion and kind, which the decoder needs and `kubectl get -o json` output always has.
func withKind(doc []byte) []byte {
	var m map[string]any
	if json.Unmarshal(doc, &m) != nil {
		return doc
	}
	m["apiVersion"], m["kind"] = "v1", "Pod"
	out, err := json.Marshal(m)
	if err != nil {
		return doc
	}
	return out
}
