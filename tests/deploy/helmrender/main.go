// helmrender renders a Helm chart's templates the way `helm template` does, without helm:
// Go text/template with the sprig functions plus the helm functions tandem's chart uses
// (include, tpl, toYaml, fromYaml, toJson, fromJson, required, fail, lookup). It exists so
// `make test` can render helm/tandem offline; it builds in GOPATH mode from Debian's
// /usr/share/gocode (golang-go, golang-github-masterminds-sprig-dev).
//
// Usage: helmrender -chart DIR [-f values.yaml]... [-name RELEASE] [-namespace NS]
//
//	[-api-versions a/v1,b/v1]
//
// Prints the manifests as helm does ("---\n# Source: <chart>/templates/<file>\n...").
// Subcharts are not rendered.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v2"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// APIVersions mirrors helm's .Capabilities.APIVersions.
type APIVersions []string

// Has reports whether an apiVersion ("group/version" or "group/version/Kind") is available.
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

// helm loads YAML through JSON (sigs.k8s.io/yaml), so maps are map[string]interface{} and
// every number is a float64; doing the same keeps the templates honest about that.
func normalize(v interface{}) (interface{}, error) {
	v = stringKeys(v)
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out interface{}
	err = json.Unmarshal(data, &out)
	return out, err
}

func stringKeys(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, val := range t {
			m[fmt.Sprint(k)] = stringKeys(val)
		}
		return m
	case map[string]interface{}:
		for k, val := range t {
			t[k] = stringKeys(val)
		}
		return t
	case []interface{}:
		for i, val := range t {
			t[i] = stringKeys(val)
		}
		return t
	}
	return v
}

func parseYAML(text string) (interface{}, error) {
	var v interface{}
	if err := yaml.Unmarshal([]byte(text), &v); err != nil {
		return nil, err
	}
	return normalize(v)
}

func loadYAMLMap(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v, err := parseYAML(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if v == nil {
		return map[string]interface{}{}, nil
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: not a mapping", path)
	}
	return m, nil
}

// mergeValues overlays src on dst as helm does with -f: maps merge, anything else
// replaces, and null deletes the key.
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			dst[k] = mergeValues(dm, sm)
		} else {
			dst[k] = v
		}
	}
	return dst
}

// toYAML is helm's toYaml: JSON first (so struct tags and key order match), then YAML.
func toYAML(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var slice yaml.MapSlice
	var out []byte
	if err := yaml.Unmarshal(data, &slice); err == nil && len(data) > 0 && data[0] == '{' {
		out, err = yaml.Marshal(slice)
		if err != nil {
			return ""
		}
	} else {
		var any interface{}
		if err := yaml.Unmarshal(data, &any); err != nil {
			return ""
		}
		out, err = yaml.Marshal(any)
		if err != nil {
			return ""
		}
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fromYAML(s string) map[string]interface{} {
	v, err := parseYAML(s)
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		return map[string]interface{}{}
	}
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func required(msg string, v interface{}) (interface{}, error) {
	if v == nil {
		return v, errors.New(msg)
	}
	if s, ok := v.(string); ok && s == "" {
		return v, errors.New(msg)
	}
	return v, nil
}

type renderer struct {
	root *template.Template
}

func (r *renderer) funcs() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	includeDepth := map[string]int{}
	f["toYaml"] = toYAML
	f["fromYaml"] = fromYAML
	f["toJson"] = toJSON
	f["fromJson"] = fromJSON
	f["required"] = required
	f["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	// No cluster here: lookup finds nothing, as with `helm template`.
	f["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth[name] > 1000 {
			return "", fmt.Errorf("include %q: nested too deep", name)
		}
		includeDepth[name]++
		defer func() { includeDepth[name]-- }()
		var buf bytes.Buffer
		if err := r.root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := r.root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	return f
}

func titleKeys(m map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range m {
		if k == "" {
			continue
		}
		out[strings.ToUpper(k[:1])+k[1:]] = v
	}
	return out
}

func main() {
	chartDir := flag.String("chart", "", "chart directory")
	release := flag.String("name", "tandem", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	apiVersions := flag.String("api-versions", "", "comma-separated extra API versions")
	var valueFiles stringList
	flag.Var(&valueFiles, "f", "values file (repeatable)")
	flag.Parse()
	if err := run(*chartDir, *release, *namespace, *apiVersions, valueFiles); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(chartDir, release, namespace, apiVersions string, valueFiles []string) error {
	if chartDir == "" {
		return errors.New("-chart is required")
	}
	chartMeta, err := loadYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	values, err := loadYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		extra, err := loadYAMLMap(f)
		if err != nil {
			return err
		}
		values = mergeValues(values, extra)
	}
	chartName, _ := chartMeta["name"].(string)
	if chartName == "" {
		return errors.New("Chart.yaml has no name")
	}

	versions := APIVersions{"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2"}
	for _, v := range strings.Split(apiVersions, ",") {
		if v != "" {
			versions = append(versions, v)
		}
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  titleKeys(chartMeta),
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{
				"Version": "v1.30.0", "GitVersion": "v1.30.0", "Major": "1", "Minor": "30",
			},
			"APIVersions": versions,
		},
		"Files": map[string]interface{}{},
	}

	r := &renderer{}
	r.root = template.New("gotpl").Option("missingkey=zero").Funcs(r.funcs())
	tplDir := filepath.Join(chartDir, "templates")
	var names []string
	err = filepath.WalkDir(tplDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, path)
		name := chartName + "/" + filepath.ToSlash(rel)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := r.root.New(name).Parse(string(data)); err != nil {
			return err
		}
		names = append(names, name)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	var out strings.Builder
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		top["Template"] = map[string]interface{}{
			"Name": name, "BasePath": chartName + "/templates",
		}
		var buf bytes.Buffer
		if err := r.root.ExecuteTemplate(&buf, name, top); err != nil {
			return err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.TrimSpace(text))
	}
	// NOTES.txt must render too (helm prints it after install).
	notes := chartName + "/templates/NOTES.txt"
	if r.root.Lookup(notes) != nil {
		var buf bytes.Buffer
		if err := r.root.ExecuteTemplate(&buf, notes, top); err != nil {
			return err
		}
	}
	fmt.Print(out.String())
	return nil
}
