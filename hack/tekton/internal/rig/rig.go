// Package rig holds what hack/tekton's programs share: reading Tekton objects from YAML, and the fake clients
// and informers of Tekton's own reconciler tests, seeded with them.
package rig

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/tektoncd/pipeline/pkg/apis/pipeline"
	v1 "github.com/tektoncd/pipeline/pkg/apis/pipeline/v1"
	"github.com/tektoncd/pipeline/pkg/apis/pipeline/v1alpha1"
	"github.com/tektoncd/pipeline/pkg/apis/pipeline/v1beta1"
	"github.com/tektoncd/pipeline/test"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	filteredinformerfactory "knative.dev/pkg/client/injection/kube/informers/factory/filtered"
	_ "knative.dev/pkg/client/injection/kube/informers/factory/filtered/fake" // the filtered pod informer, faked
	"knative.dev/pkg/configmap"
	cminformer "knative.dev/pkg/configmap/informer"
	"knative.dev/pkg/controller"
	"knative.dev/pkg/injection"
	"knative.dev/pkg/logging"
	pkgreconciler "knative.dev/pkg/reconciler"
	"knative.dev/pkg/system"
	"sigs.k8s.io/yaml"
)

// Images names the images of Tekton's own containers in the Pod; the pod runner maps them to root filesystems.
var Images = pipeline.Images{
	EntrypointImage:        "tekton/entrypoint",
	SidecarLogResultsImage: "tekton/sidecarlogresults",
	NopImage:               "tekton/nop",
	ShellImage:             "tekton/shell",
	ShellImageWin:          "tekton/shell-win",
	WorkingDirInitImage:    "tekton/workingdirinit",
}

// UID is a fixed, valid UID made from a name, for objects the files give without one.
func UID(name string) string {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h = (h ^ uint32(name[i])) * 16777619
	}
	return fmt.Sprintf("%08x-0000-4000-8000-000000000000", h)
}

// WorkspaceBinding is a TaskRun or PipelineRun workspace binding from NAME and emptyDir, pvc:CLAIM,
// configmap:NAME or secret:NAME.
func WorkspaceBinding(name, source string) (v1.WorkspaceBinding, error) {
	b := v1.WorkspaceBinding{Name: name}
	kind, ref, _ := strings.Cut(source, ":")
	switch kind {
	case "emptyDir":
		b.EmptyDir = &corev1.EmptyDirVolumeSource{}
	case "pvc":
		b.PersistentVolumeClaim = &corev1.PersistentVolumeClaimVolumeSource{ClaimName: ref}
	case "configmap":
		b.ConfigMap = &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: ref}}
	case "secret":
		b.Secret = &corev1.SecretVolumeSource{SecretName: ref}
	default:
		return b, fmt.Errorf("workspace %s: want emptyDir, pvc:CLAIM, configmap:NAME or secret:NAME, got %q", name, source)
	}
	return b, nil
}

// KeyValues is a repeatable KEY=VALUE flag.
type KeyValues map[string]string

func (kv KeyValues) String() string { return fmt.Sprint(map[string]string(kv)) }

func (kv KeyValues) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	kv[k] = v
	return nil
}

// Prepare makes d what a cluster would hold for a run in namespace ns: the Tasks, Pipelines and StepActions in
// ns, its service account serviceAccount ("default" when empty: every namespace has one, and the pod builder
// reads it for its secrets), and Tekton's configuration ConfigMaps, in the system namespace, which is
// tekton-pipelines as in Tekton's release unless SYSTEM_NAMESPACE says otherwise.
func Prepare(d *test.Data, ns, serviceAccount string) {
	if os.Getenv(system.NamespaceEnvKey) == "" {
		_ = os.Setenv(system.NamespaceEnvKey, "tekton-pipelines")
	}
	for _, t := range d.Tasks {
		t.Namespace = ns
	}
	for _, p := range d.Pipelines {
		p.Namespace = ns
	}
	for _, s := range d.StepActions {
		s.Namespace = ns
	}
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	d.ServiceAccounts = append(d.ServiceAccounts, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: serviceAccount, Namespace: ns},
	})
	test.EnsureConfigurationConfigMapsExist(d)
}

// FakeContext is the injection context of Tekton's reconciler tests: every client and informer faked, pods
// filtered by the managed-by label as the controller's are, logs at warning level on stderr.
func FakeContext() (context.Context, context.CancelFunc) {
	logger, _ := zap.Config{
		Level:             zap.NewAtomicLevelAt(zapcore.WarnLevel),
		Encoding:          "console",
		DisableStacktrace: true,
		EncoderConfig:     zap.NewDevelopmentEncoderConfig(),
		OutputPaths:       []string{"stderr"},
		ErrorOutputPaths:  []string{"stderr"},
	}.Build()
	ctx, cancel := context.WithCancel(logging.WithLogger(context.Background(), logger.Sugar()))
	ctx = controller.WithEventRecorder(ctx, record.NewFakeRecorder(1000))
	ctx = filteredinformerfactory.WithSelectors(ctx, v1.ManagedByLabelKey)
	ctx, _ = injection.Fake.SetupInformers(ctx, &rest.Config{})
	return ctx, cancel
}

// Seed stores d in the fake clients and informers with Tekton's own test helper. That helper reports a failure
// through a testing.T, so it runs on a goroutine of its own: T.Fatal ends only that goroutine.
func Seed(ctx context.Context, d test.Data) (test.Clients, error) {
	t := &testing.T{}
	var clients test.Clients
	done := make(chan bool)
	go func() {
		finished := false
		defer func() { done <- finished }()
		clients, _ = test.SeedTestData(t, ctx, d)
		finished = true
	}()
	if !<-done || t.Failed() {
		return clients, errors.New("seeding the fake clients failed")
	}
	// The API server gives every object it creates a UID; Tekton relies on them (owner references, labels).
	clients.Pipeline.PrependReactor("create", "*", assignUID)
	clients.Kube.PrependReactor("create", "*", assignUID)
	return clients, nil
}

func assignUID(action k8stesting.Action) (bool, runtime.Object, error) {
	if create, ok := action.(k8stesting.CreateAction); ok {
		if obj, err := meta.Accessor(create.GetObject()); err == nil && obj.GetUID() == "" {
			obj.SetUID(types.UID(UID(obj.GetNamespace() + "/" + obj.GetName() + "/" + action.GetResource().Resource)))
		}
	}
	return false, nil, nil
}

// NewController is the shape of Tekton's reconcilers' controller constructors (taskrun.NewController, ...).
type NewController func(*pipeline.Options, clock.PassiveClock) func(context.Context, configmap.Watcher) *controller.Impl

// Start makes Tekton's controllers on the fake clients, as Tekton's controller binary does (one ConfigMap watcher
// for their configuration, started after them), and makes each the leader, so that Reconcile acts.
func Start(ctx context.Context, clients test.Clients, constructors ...NewController) ([]*controller.Impl, error) {
	cmw := cminformer.NewInformedWatcher(clients.Kube, system.Namespace())
	impls := make([]*controller.Impl, 0, len(constructors))
	for _, newController := range constructors {
		impls = append(impls, newController(&pipeline.Options{Images: Images}, clock.RealClock{})(ctx, cmw))
	}
	if err := cmw.Start(ctx.Done()); err != nil {
		return nil, fmt.Errorf("starting the ConfigMap watcher: %w", err)
	}
	for _, impl := range impls {
		if la, ok := impl.Reconciler.(pkgreconciler.LeaderAware); ok {
			_ = la.Promote(pkgreconciler.UniversalBucket(), func(pkgreconciler.Bucket, types.NamespacedName) {})
		}
	}
	return impls, nil
}

// ReadObjects adds the Tasks, Pipelines, StepActions, TaskRuns and PipelineRuns of a YAML or JSON stream to d
// (v1beta1 Tasks and Pipelines and v1alpha1 StepActions converted as Tekton's conversion webhook does); other
// kinds are ignored.
func ReadObjects(path string, d *test.Data) error {
	var r io.Reader
	if path == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	for i, doc := range splitDocuments(r) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return fmt.Errorf("%s: document %d: %w", path, i+1, err)
		}
		if err := addObject(head.APIVersion, head.Kind, doc, d); err != nil {
			return fmt.Errorf("%s: document %d (%s): %w", path, i+1, head.Kind, err)
		}
	}
	return nil
}

func addObject(apiVersion, kind string, doc []byte, d *test.Data) error {
	ctx := context.Background()
	switch kind + " " + apiVersion {
	case "Task tekton.dev/v1":
		t := &v1.Task{}
		if err := yaml.UnmarshalStrict(doc, t); err != nil {
			return err
		}
		d.Tasks = append(d.Tasks, t)
	case "Task tekton.dev/v1beta1":
		old := &v1beta1.Task{}
		if err := yaml.UnmarshalStrict(doc, old); err != nil {
			return err
		}
		t := &v1.Task{}
		if err := old.ConvertTo(ctx, t); err != nil {
			return err
		}
		d.Tasks = append(d.Tasks, t)
	case "StepAction tekton.dev/v1beta1":
		s := &v1beta1.StepAction{}
		if err := yaml.UnmarshalStrict(doc, s); err != nil {
			return err
		}
		d.StepActions = append(d.StepActions, s)
	case "StepAction tekton.dev/v1alpha1":
		old := &v1alpha1.StepAction{}
		if err := yaml.UnmarshalStrict(doc, old); err != nil {
			return err
		}
		s := &v1beta1.StepAction{}
		if err := old.ConvertTo(ctx, s); err != nil {
			return err
		}
		d.StepActions = append(d.StepActions, s)
	case "Pipeline tekton.dev/v1":
		pl := &v1.Pipeline{}
		if err := yaml.UnmarshalStrict(doc, pl); err != nil {
			return err
		}
		d.Pipelines = append(d.Pipelines, pl)
	case "Pipeline tekton.dev/v1beta1":
		old := &v1beta1.Pipeline{}
		if err := yaml.UnmarshalStrict(doc, old); err != nil {
			return err
		}
		pl := &v1.Pipeline{}
		if err := old.ConvertTo(ctx, pl); err != nil {
			return err
		}
		d.Pipelines = append(d.Pipelines, pl)
	case "PipelineRun tekton.dev/v1":
		pr := &v1.PipelineRun{}
		if err := yaml.UnmarshalStrict(doc, pr); err != nil {
			return err
		}
		d.PipelineRuns = append(d.PipelineRuns, pr)
	case "TaskRun tekton.dev/v1":
		tr := &v1.TaskRun{}
		if err := yaml.UnmarshalStrict(doc, tr); err != nil {
			return err
		}
		d.TaskRuns = append(d.TaskRuns, tr)
	}
	return nil
}

// splitDocuments splits a YAML stream at its "---" lines; a JSON file is one document.
func splitDocuments(r io.Reader) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if len(bytes.TrimSpace(cur.Bytes())) > 0 {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "---") && strings.TrimSpace(strings.TrimPrefix(line, "---")) == "" {
			flush()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	flush()
	return docs
}
