// Command tekton-pod prints the Pod that Tekton's controller creates for a TaskRun.
//
// It runs Tekton's real TaskRun reconciler (github.com/tektoncd/pipeline/pkg/reconciler/taskrun) once, on the
// fake clients and informers Tekton's own reconciler tests use, seeded with the Tasks, StepActions and TaskRun read
// from YAML files and Tekton's default configuration. The reconciler resolves the Task and its StepActions, applies
// parameters, contexts, results and workspaces, and calls the pod builder with its real defaults and feature flags;
// the Pod it stores in the fake Kubernetes client is printed as JSON. Nothing here re-implements Tekton.
//
//	tekton-pod [-task NAME] [-name TASKRUN] [-namespace NS] [-uid UID] [-annotation K=V]... [-param K=V]...
//	           [-feature-flag K=V]... [-pod POD.json] FILE...
//
// With -pod, the Pod (as created before, with the status a kubelet reported) is seeded too, and the TaskRun is
// printed after the reconciler has read that status: Tekton's own verdict on the run (step states and their
// termination reasons, results, the Succeeded condition).
//
// When the files hold a TaskRun it is used (its missing namespace and uid filled in); otherwise a TaskRun of the
// Task named by -task (or of the only Task) is made. A step without a command runs its image's ENTRYPOINT, which
// the reconciler looks up in the image's registry, as on a cluster.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tektoncd/pipeline/pkg/apis/config"
	"github.com/tektoncd/pipeline/pkg/apis/pipeline"
	v1 "github.com/tektoncd/pipeline/pkg/apis/pipeline/v1"
	"github.com/tektoncd/pipeline/pkg/apis/pipeline/v1alpha1"
	"github.com/tektoncd/pipeline/pkg/apis/pipeline/v1beta1"
	"github.com/tektoncd/pipeline/pkg/reconciler/taskrun"
	_ "github.com/tektoncd/pipeline/pkg/taskrunmetrics/fake" // the reconciler's metrics recorder, faked as in Tekton's tests
	"github.com/tektoncd/pipeline/test"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	filteredinformerfactory "knative.dev/pkg/client/injection/kube/informers/factory/filtered"
	_ "knative.dev/pkg/client/injection/kube/informers/factory/filtered/fake"
	cminformer "knative.dev/pkg/configmap/informer"
	"knative.dev/pkg/controller"
	"knative.dev/pkg/injection"
	"knative.dev/pkg/logging"
	pkgreconciler "knative.dev/pkg/reconciler"
	"knative.dev/pkg/system"
	"sigs.k8s.io/yaml"
)

// Images names the images of Tekton's own containers in the Pod; the pod runner maps them to root filesystems.
var images = pipeline.Images{
	EntrypointImage:        "tekton/entrypoint",
	SidecarLogResultsImage: "tekton/sidecarlogresults",
	NopImage:               "tekton/nop",
	ShellImage:             "tekton/shell",
	ShellImageWin:          "tekton/shell-win",
	WorkingDirInitImage:    "tekton/workingdirinit",
}

type keyValues map[string]string

func (kv keyValues) String() string { return fmt.Sprint(map[string]string(kv)) }

func (kv keyValues) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	kv[k] = v
	return nil
}

type options struct {
	task, name, namespace, uid, serviceAccount string
	podFile                                    string
	timeout                                    time.Duration
	annotations, labels, params, flags         keyValues
	workspaces                                 keyValues
}

func main() {
	o := options{
		annotations: keyValues{}, labels: keyValues{}, params: keyValues{}, flags: keyValues{}, workspaces: keyValues{},
	}
	// A flag set of our own: packages Tekton imports register flags (-namespace, ...) on the global one.
	fs := flag.NewFlagSet("tekton-pod", flag.ExitOnError)
	fs.StringVar(&o.task, "task", "", "the Task to run when the files hold several and no TaskRun")
	fs.StringVar(&o.name, "name", "", "TaskRun name (default: the Task's name + \"-run\")")
	fs.StringVar(&o.namespace, "namespace", "default", "namespace")
	fs.StringVar(&o.uid, "uid", "", "TaskRun UID (default: a fixed UID derived from the name)")
	fs.StringVar(&o.serviceAccount, "service-account", "", "the TaskRun's serviceAccountName")
	fs.StringVar(&o.podFile, "pod", "", "a Pod with status (JSON): print the TaskRun the reconciler makes of it")
	fs.DurationVar(&o.timeout, "timeout", 0, "the TaskRun's timeout (default: Tekton's default, 1h)")
	fs.Var(o.annotations, "annotation", "TaskRun annotation KEY=VALUE (repeatable)")
	fs.Var(o.labels, "label", "TaskRun label KEY=VALUE (repeatable)")
	fs.Var(o.params, "param", "TaskRun string param NAME=VALUE (repeatable)")
	fs.Var(o.workspaces, "workspace", "workspace binding NAME=emptyDir|pvc:CLAIM|configmap:NAME|secret:NAME (repeatable)")
	fs.Var(o.flags, "feature-flag", "feature-flags ConfigMap entry KEY=VALUE (repeatable)")
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "tekton-pod: give one or more YAML files (- for stdin)")
		os.Exit(2)
	}
	// knative's system.Namespace(): where the controller's ConfigMaps live, as in Tekton's release.
	if os.Getenv(system.NamespaceEnvKey) == "" {
		_ = os.Setenv(system.NamespaceEnvKey, "tekton-pipelines")
	}
	out, err := run(o, fs.Args())
	if err != nil {
		fmt.Fprintln(os.Stderr, "tekton-pod:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "tekton-pod:", err)
		os.Exit(1)
	}
}

func run(o options, files []string) (any, error) {
	var d test.Data
	for _, f := range files {
		if err := readObjects(f, &d); err != nil {
			return nil, err
		}
	}
	tr, err := taskRunFor(o, &d)
	if err != nil {
		return nil, err
	}
	for _, t := range d.Tasks {
		t.Namespace = tr.Namespace
	}
	for _, s := range d.StepActions {
		s.Namespace = tr.Namespace
	}
	d.TaskRuns = []*v1.TaskRun{tr}
	if o.podFile != "" {
		pod, err := readPod(o.podFile)
		if err != nil {
			return nil, err
		}
		d.Pods = []*corev1.Pod{pod}
		// What the first reconcile recorded when it created the pod; without it the reconciler looks the pod up
		// by label and passes over a failed one, as it would before a retry.
		tr.Status.PodName = pod.Name
	}
	// Every namespace has a "default" ServiceAccount; the pod builder reads the TaskRun's for its secrets.
	sa := tr.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	d.ServiceAccounts = append(d.ServiceAccounts, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: tr.Namespace}})
	test.EnsureConfigurationConfigMapsExist(&d)
	for _, cm := range d.ConfigMaps {
		if cm.Name == config.GetFeatureFlagsConfigName() {
			for k, v := range o.flags {
				cm.Data[k] = v
			}
		}
	}

	ctx, cancel := fakeContext()
	defer cancel()
	clients, err := seed(ctx, d)
	if err != nil {
		return nil, err
	}
	cmw := cminformer.NewInformedWatcher(clients.Kube, system.Namespace())
	impl := taskrun.NewController(&pipeline.Options{Images: images}, clock.RealClock{})(ctx, cmw)
	if err := cmw.Start(ctx.Done()); err != nil {
		return nil, fmt.Errorf("starting the ConfigMap watcher: %w", err)
	}
	if la, ok := impl.Reconciler.(pkgreconciler.LeaderAware); ok {
		_ = la.Promote(pkgreconciler.UniversalBucket(), func(pkgreconciler.Bucket, types.NamespacedName) {})
	}
	key := tr.Namespace + "/" + tr.Name
	recErr := impl.Reconciler.Reconcile(ctx, key)
	if o.podFile != "" {
		got, err := clients.Pipeline.TektonV1().TaskRuns(tr.Namespace).Get(ctx, tr.Name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("reading back TaskRun %s: %w (reconcile: %v)", key, err, recErr)
		}
		return got, nil
	}
	pods, err := clients.Kube.CoreV1().Pods(tr.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("the reconciler created no Pod for TaskRun %s: %v%s", key, recErr, taskRunFailure(ctx, clients, tr))
	}
	return &pods.Items[0], nil
}

func readPod(path string) (*corev1.Pod, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(data, pod); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pod, nil
}

// taskRunFailure is the condition the reconciler wrote on the TaskRun, for an error message.
func taskRunFailure(ctx context.Context, c test.Clients, tr *v1.TaskRun) string {
	got, err := c.Pipeline.TektonV1().TaskRuns(tr.Namespace).Get(ctx, tr.Name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	for _, cond := range got.Status.Conditions {
		return fmt.Sprintf(" (TaskRun %s: %s)", cond.Reason, cond.Message)
	}
	return ""
}

// fakeContext is the injection context of Tekton's reconciler tests: every client and informer faked, pods
// filtered by the managed-by label as the controller's are, logs at warning level on stderr.
func fakeContext() (context.Context, context.CancelFunc) {
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

// seed stores d in the fake clients and informers with Tekton's own test helper. That helper reports a failure
// through a testing.T, so it runs on a goroutine of its own: T.Fatal ends only that goroutine.
func seed(ctx context.Context, d test.Data) (test.Clients, error) {
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
	return clients, nil
}

func taskRunFor(o options, d *test.Data) (*v1.TaskRun, error) {
	var tr *v1.TaskRun
	switch {
	case len(d.TaskRuns) > 1:
		return nil, errors.New("the files hold more than one TaskRun")
	case len(d.TaskRuns) == 1:
		tr = d.TaskRuns[0]
	default:
		task, err := pickTask(o.task, d.Tasks)
		if err != nil {
			return nil, err
		}
		tr = &v1.TaskRun{Spec: v1.TaskRunSpec{TaskRef: &v1.TaskRef{Name: task.Name, Kind: v1.NamespacedTaskKind}}}
		tr.Name = task.Name + "-run"
	}
	if o.name != "" {
		tr.Name = o.name
	}
	if tr.Namespace == "" || o.namespace != "default" {
		tr.Namespace = o.namespace
	}
	if o.uid != "" {
		tr.UID = types.UID(o.uid)
	} else if tr.UID == "" {
		tr.UID = types.UID(fmt.Sprintf("%08x-0000-4000-8000-000000000000", fnv32(tr.Namespace+"/"+tr.Name)))
	}
	if o.serviceAccount != "" {
		tr.Spec.ServiceAccountName = o.serviceAccount
	}
	if o.timeout != 0 {
		tr.Spec.Timeout = &metav1.Duration{Duration: o.timeout}
	}
	tr.Annotations = merge(tr.Annotations, o.annotations)
	tr.Labels = merge(tr.Labels, o.labels)
	for k, v := range o.params {
		tr.Spec.Params = append(tr.Spec.Params, v1.Param{Name: k, Value: *v1.NewStructuredValues(v)})
	}
	for name, source := range o.workspaces {
		binding, err := workspaceBinding(name, source)
		if err != nil {
			return nil, err
		}
		tr.Spec.Workspaces = append(tr.Spec.Workspaces, binding)
	}
	return tr, nil
}

func workspaceBinding(name, source string) (v1.WorkspaceBinding, error) {
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

func pickTask(name string, tasks []*v1.Task) (*v1.Task, error) {
	if name == "" {
		if len(tasks) != 1 {
			return nil, fmt.Errorf("the files hold %d Tasks and no TaskRun: name one with -task", len(tasks))
		}
		return tasks[0], nil
	}
	for _, t := range tasks {
		if t.Name == name {
			return t, nil
		}
	}
	return nil, fmt.Errorf("no Task named %q in the files", name)
}

func merge(into, from map[string]string) map[string]string {
	if len(from) == 0 {
		return into
	}
	if into == nil {
		into = map[string]string{}
	}
	for k, v := range from {
		into[k] = v
	}
	return into
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

// readObjects adds the Tasks, StepActions and TaskRuns of a YAML or JSON stream to d (v1beta1 Tasks and
// v1alpha1 StepActions converted as Tekton's conversion webhook does); other kinds are ignored.
func readObjects(path string, d *test.Data) error {
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
