// chart_render renders a Helm chart the way Helm's engine does — Go's text/template with the
// sprig functions plus Helm's own (include, tpl, required, toYaml, fromYaml, toJson, lookup) —
// without a Kubernetes cluster or the helm binary, for the chart tests.
//
// usage: chart_render CHART_DIR [VALUES_FILE ...]   (release name "totes-cdc", namespace "cdc")
// The manifests go to stdout, the rendered NOTES.txt to stderr.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "chart_render: "+format+"\n", args...)
	os.Exit(1)
}

func readYaml(path string) map[string]interface{} {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		fail("%s: %v", path, err)
	}
	return out
}

// merge overlays src onto dst, maps recursively (Helm's coalescing of values files).
func merge(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if sv, ok := v.(map[string]interface{}); ok {
			if dv, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dv, sv)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

func toYaml(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: chart_render CHART_DIR [VALUES_FILE ...]")
	}
	dir := os.Args[1]
	chart := readYaml(filepath.Join(dir, "Chart.yaml"))
	values := readYaml(filepath.Join(dir, "values.yaml"))
	for _, f := range os.Args[2:] {
		values = merge(values, readYaml(f))
	}
	name, _ := chart["name"].(string)
	files, err := filepath.Glob(filepath.Join(dir, "templates", "*"))
	if err != nil {
		fail("%v", err)
	}
	sort.Strings(files)

	tpl := template.New("chart")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYaml
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["toJson"] = func(v interface{}) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["include"] = func(n string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := tpl.ExecuteTemplate(&buf, n, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := tpl.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["lookup"] = func(...interface{}) map[string]interface{} { return map[string]interface{}{} }
	tpl = tpl.Funcs(funcs).Option("missingkey=zero")

	// Files the chart reads with .Files.Get.
	chartFiles := map[string]string{}
	filepath.Walk(filepath.Join(dir, "files"), func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			data, _ := os.ReadFile(p)
			chartFiles[rel] = string(data)
		}
		return nil
	})

	var order []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			fail("%v", err)
		}
		n := name + "/templates/" + filepath.Base(f)
		if _, err := tpl.New(n).Parse(string(data)); err != nil {
			fail("%v", err)
		}
		base := filepath.Base(f)
		if !strings.HasPrefix(base, "_") && (strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".yml") || base == "NOTES.txt") {
			order = append(order, n)
		}
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart": map[string]interface{}{
			"Name":       chart["name"],
			"Version":    chart["version"],
			"AppVersion": chart["appVersion"],
		},
		"Release": map[string]interface{}{
			"Name":      "totes-cdc",
			"Namespace": "cdc",
			"Service":   "Helm",
			"IsInstall": true,
			"IsUpgrade": false,
			"Revision":  1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
		},
		"Files": Files(chartFiles),
	}
	for _, n := range order {
		var buf bytes.Buffer
		if err := tpl.ExecuteTemplate(&buf, n, top); err != nil {
			fail("%v", err)
		}
		out := strings.TrimSpace(buf.String())
		if strings.HasSuffix(n, "/NOTES.txt") {
			// What helm prints after an install: to stderr, apart from the manifests.
			fmt.Fprintf(os.Stderr, "NOTES:\n%s\n", out)
			continue
		}
		if out == "" {
			continue
		}
		fmt.Printf("---\n# Source: %s\n%s\n", n, out)
	}
}

// Files is .Files of a chart: Get returns a file's content ("" when missing).
type Files map[string]string

func (f Files) Get(name string) string { return f[name] }
