// Command tekton-controller runs a PipelineRun through Tekton's real PipelineRun and TaskRun reconcilers, on
// the fake clients of Tekton's own reconciler tests, with a kubelet on the other end of stdin and stdout.
//
// Tekton's tracing is on (config-tracing: enabled, the -tracing-endpoint OTLP/HTTP URL), so the reconcilers
// export their own PipelineRun and TaskRun spans and write tekton.dev/pipelinerunSpanContext and
// taskrunSpanContext themselves; the pods they create carry them to the steps.
//
// Protocol, one JSON object per line:
//
//	out: {"pod": POD}                                    a pod the TaskRun reconciler created: run it
//	in:  {"pod": POD}                                    that pod after it ran, with the status a kubelet reports
//	out: {"done": {"pipelineRun": PR, "taskRuns": [TR]}} the PipelineRun is done; the program then exits
//
//	tekton-controller [-pipeline NAME] [-name PIPELINERUN] [-namespace NS] [-param K=V]... [-workspace K=emptyDir]...
//	                  [-tracing-endpoint URL] FILE...
package main

import (
	"bufio"
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
	_ "github.com/tektoncd/pipeline/pkg/pipelinerunmetrics/fake" // the reconcilers' metrics recorders, faked as
	"github.com/tektoncd/pipeline/pkg/reconciler/pipelinerun"
	"github.com/tektoncd/pipeline/pkg/reconciler/taskrun"
	_ "github.com/tektoncd/pipeline/pkg/taskrunmetrics/fake" // in Tekton's own tests
	"github.com/tektoncd/pipeline/test"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"knative.dev/pkg/apis"
	"knative.dev/pkg/controller"
)

type options struct {
	pipeline, name, namespace, tracing string
	params, workspaces                 rig.KeyValues
	timeout                            time.Duration
}

func main() {
	o := options{params: rig.KeyValues{}, workspaces: rig.KeyValues{}}
	fs := flag.NewFlagSet("tekton-controller", flag.ExitOnError)
	fs.StringVar(&o.pipeline, "pipeline", "", "the Pipeline to run when the files hold several and no PipelineRun")
	fs.StringVar(&o.name, "name", "", "PipelineRun name (default: the Pipeline's name + \"-run\")")
	fs.StringVar(&o.namespace, "namespace", "default", "namespace")
	fs.StringVar(&o.tracing, "tracing-endpoint", "", "config-tracing endpoint: Tekton's spans go there (OTLP/HTTP)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up when the PipelineRun is not done by then")
	fs.Var(o.params, "param", "PipelineRun string param NAME=VALUE (repeatable)")
	fs.Var(o.workspaces, "workspace", "PipelineRun workspace NAME=emptyDir|pvc:CLAIM|configmap:NAME|secret:NAME (repeatable)")
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "tekton-controller: give one or more YAML files")
		os.Exit(2)
	}
	// Tekton's tracer providers batch spans; a short delay gets them out before this program ends.
	if os.Getenv("OTEL_BSP_SCHEDULE_DELAY") == "" {
		_ = os.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	}
	if err := run(o, fs.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "tekton-controller:", err)
		os.Exit(1)
	}
}

type controllers struct {
	clients            test.Clients
	pipelineRuns, runs *controller.Impl
	namespace          string
}

func run(o options, files []string) error {
	var d test.Data
	for _, f := range files {
		if err := rig.ReadObjects(f, &d); err != nil {
			return err
		}
	}
	pr, err := pipelineRunFor(o, &d)
	if err != nil {
		return err
	}
	d.PipelineRuns = []*v1.PipelineRun{pr}
	d.TaskRuns = nil
	rig.Prepare(&d, pr.Namespace, "")
	for _, cm := range d.ConfigMaps {
		if cm.Name == config.GetTracingConfigName() && o.tracing != "" {
			cm.Data = map[string]string{"enabled": "true", "endpoint": o.tracing}
		}
	}

	ctx, cancel := rig.FakeContext()
	defer cancel()
	clients, err := rig.Seed(ctx, d)
	if err != nil {
		return err
	}
	impls, err := rig.Start(ctx, clients, pipelinerun.NewController, taskrun.NewController)
	if err != nil {
		return err
	}
	c := controllers{clients: clients, pipelineRuns: impls[0], runs: impls[1], namespace: pr.Namespace}

	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	sent := map[string]bool{}
	running := 0
	deadline := time.Now().Add(o.timeout)
	for {
		done, err := c.reconcile(ctx, pr.Name)
		if err != nil {
			return err
		}
		pods, err := clients.Kube.CoreV1().Pods(c.namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for i := range pods.Items {
			pod := &pods.Items[i]
			if sent[pod.Name] {
				continue
			}
			sent[pod.Name] = true
			running++
			if err := out.Encode(map[string]any{"pod": pod}); err != nil {
				return err
			}
		}
		if done {
			break
		}
		if running == 0 {
			return errors.New("the PipelineRun is not done and no pod is running: " + c.condition(ctx, pr.Name))
		}
		if time.Now().After(deadline) {
			return errors.New("the PipelineRun is not done in time: " + c.condition(ctx, pr.Name))
		}
		if !in.Scan() {
			return fmt.Errorf("the kubelet went away (%v) with %d pods running", in.Err(), running)
		}
		var msg struct {
			Pod *corev1.Pod `json:"pod"`
		}
		if err := json.Unmarshal(in.Bytes(), &msg); err != nil || msg.Pod == nil {
			return fmt.Errorf("want {\"pod\": POD} from the kubelet, got %.200q", in.Text())
		}
		if _, err := clients.Kube.CoreV1().Pods(c.namespace).Update(ctx, msg.Pod, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("storing the status of pod %s: %w", msg.Pod.Name, err)
		}
		running--
	}
	final, err := clients.Pipeline.TektonV1().PipelineRuns(c.namespace).Get(ctx, pr.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	trs, err := clients.Pipeline.TektonV1().TaskRuns(c.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if err := out.Encode(map[string]any{"done": map[string]any{"pipelineRun": final, "taskRuns": trs.Items}}); err != nil {
		return err
	}
	// The batch span processors flush every OTEL_BSP_SCHEDULE_DELAY; give the last batch time to leave.
	time.Sleep(time.Second)
	return nil
}

// reconcile runs the TaskRun reconciler on every TaskRun (pod statuses become TaskRun statuses), the PipelineRun
// reconciler (finished TaskRuns start the next ones), then the TaskRun reconciler again (new TaskRuns get pods),
// as the controller's work queues would. True once the PipelineRun is done.
func (c controllers) reconcile(ctx context.Context, name string) (bool, error) {
	for _, pass := range []string{"taskruns", "pipelinerun", "taskruns", "pipelinerun"} {
		if pass == "pipelinerun" {
			_ = c.pipelineRuns.Reconciler.Reconcile(ctx, c.namespace+"/"+name)
			continue
		}
		trs, err := c.clients.Pipeline.TektonV1().TaskRuns(c.namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, tr := range trs.Items {
			_ = c.runs.Reconciler.Reconcile(ctx, c.namespace+"/"+tr.Name)
		}
	}
	pr, err := c.clients.Pipeline.TektonV1().PipelineRuns(c.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	return pr.IsDone(), nil
}

func (c controllers) condition(ctx context.Context, name string) string {
	pr, err := c.clients.Pipeline.TektonV1().PipelineRuns(c.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	if cond := pr.Status.GetCondition(apis.ConditionSucceeded); cond != nil {
		return cond.Reason + ": " + cond.Message
	}
	return "no condition"
}

func pipelineRunFor(o options, d *test.Data) (*v1.PipelineRun, error) {
	var pr *v1.PipelineRun
	switch {
	case len(d.PipelineRuns) > 1:
		return nil, errors.New("the files hold more than one PipelineRun")
	case len(d.PipelineRuns) == 1:
		pr = d.PipelineRuns[0]
	default:
		var p *v1.Pipeline
		for _, candidate := range d.Pipelines {
			if o.pipeline == "" || candidate.Name == o.pipeline {
				if p != nil && o.pipeline == "" {
					return nil, errors.New("the files hold several Pipelines and no PipelineRun: name one with -pipeline")
				}
				p = candidate
			}
		}
		if p == nil {
			return nil, fmt.Errorf("no Pipeline %q in the files", o.pipeline)
		}
		pr = &v1.PipelineRun{Spec: v1.PipelineRunSpec{PipelineRef: &v1.PipelineRef{Name: p.Name}}}
		pr.Name = p.Name + "-run"
	}
	if o.name != "" {
		pr.Name = o.name
	}
	if pr.Namespace == "" || o.namespace != "default" {
		pr.Namespace = o.namespace
	}
	if pr.UID == "" {
		pr.UID = types.UID(rig.UID(pr.Namespace + "/" + pr.Name))
	}
	for k, v := range o.params {
		pr.Spec.Params = append(pr.Spec.Params, v1.Param{Name: k, Value: *v1.NewStructuredValues(v)})
	}
	for name, source := range o.workspaces {
		binding, err := rig.WorkspaceBinding(name, source)
		if err != nil {
			return nil, err
		}
		pr.Spec.Workspaces = append(pr.Spec.Workspaces, binding)
	}
	return pr, nil
}
