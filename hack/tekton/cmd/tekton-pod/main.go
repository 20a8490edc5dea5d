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
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/step-tracer/step-tracer/hack/tekton/internal/rig"
	"github.com/tektoncd/pipeline/pkg/apis/config"
	v1 "github.com/tektoncd/pipeline/pkg/apis/pipeline/v1"
	"github.com/tektoncd/pipeline/pkg/reconciler/taskrun"
	_ "github.com/tektoncd/pipeline/pkg/taskrunmetrics/fake" // the reconciler's metrics recorder, faked as in Tekton's tests
	"github.com/tektoncd/pipeline/test"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

type options struct {
	task, name, namespace, uid, serviceAccount string
	podFile                                    string
	timeout                                    time.Duration
	annotations, labels, params, flags         rig.KeyValues
	workspaces                                 rig.KeyValues
}

func main() {
	o := options{
		annotations: rig.KeyValues{}, labels: rig.KeyValues{}, params: rig.KeyValues{}, flags: rig.KeyValues{}, workspaces: rig.KeyValues{},
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
		if err := rig.ReadObjects(f, &d); err != nil {
			return nil, err
		}
	}
	tr, err := taskRunFor(o, &d)
	if err != nil {
		return nil, err
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
	rig.Prepare(&d, tr.Namespace, tr.Spec.ServiceAccountName)
	for _, cm := range d.ConfigMaps {
		if cm.Name == config.GetFeatureFlagsConfigName() {
			for k, v := range o.flags {
				cm.Data[k] = v
			}
		}
	}

	ctx, cancel := rig.FakeContext()
	defer cancel()
	clients, err := rig.Seed(ctx, d)
	if err != nil {
		return nil, err
	}
	impls, err := rig.Start(ctx, clients, taskrun.NewController)
	if err != nil {
		return nil, err
	}
	impl := impls[0]
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
		tr.UID = types.UID(rig.UID(tr.Namespace + "/" + tr.Name))
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
		binding, err := rig.WorkspaceBinding(name, source)
		if err != nil {
			return nil, err
		}
		tr.Spec.Workspaces = append(tr.Spec.Workspaces, binding)
	}
	return tr, nil
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
