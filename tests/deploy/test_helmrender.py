"""The Go renderer behaves as helm does for what charts rely on: include, tpl, toYaml,
required, fail, lookup, value merging, numbers as float64 and missing keys as empty."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.deploy_render import helm_template

TEMPLATE = """\
{{- define "probe.name" -}}{{ .Release.Name }}-{{ .Chart.Name }}{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "probe.name" . }}
  namespace: {{ .Release.Namespace }}
data:
  tpl: {{ tpl .Values.greeting . | quote }}
  yaml: |
    {{- toYaml .Values.nested | nindent 4 }}
  number: {{ .Values.port | quote }}
  big: {{ .Values.big | quote }}
  missing: "{{ .Values.nothing }}"
  merged: {{ .Values.nested.keep | quote }}
  lookup: {{ lookup "v1" "Secret" "ns" "x" | len | quote }}
  fromYaml: {{ (fromYaml "a: {b: 1}").a.b | quote }}
  sprig: {{ list 3 1 2 | sortAlpha | join "," | quote }}
"""


def _chart(tmp_path: Path, values: str, template: str = TEMPLATE) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 1.0.0\n")
    (tmp_path / "values.yaml").write_text(values)
    (tmp_path / "templates" / "cm.yaml").write_text(template)
    (tmp_path / "templates" / "NOTES.txt").write_text("{{ .Release.Name }}\n")
    return tmp_path


def test_renders_helm_functions_and_values(tmp_path: Path) -> None:
    chart = _chart(
        tmp_path,
        "greeting: 'hello {{ .Release.Name }}'\nport: 5060\nbig: 1000000\n"
        "nested: {keep: kept, drop: dropped, z: [1, 2]}\n",
    )
    override = tmp_path / "override.yaml"
    override.write_text("nested: {drop: null, a: 'on'}\n")
    result = helm_template(override, chart=chart, name="rel", namespace="voice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("---\n# Source: probe/templates/cm.yaml\n")
    (doc,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert doc["metadata"] == {"name": "rel-probe", "namespace": "voice"}
    data = doc["data"]
    assert data["tpl"] == "hello rel"
    assert yaml.safe_load(data["yaml"]) == {"a": "on", "keep": "kept", "z": [1, 2]}
    assert data["number"] == "5060"
    assert data["big"] == "1e+06", "helm reads numbers as float64, and so prints big ones"
    assert data["missing"] == ""
    assert data["merged"] == "kept"
    assert data["lookup"] == "0", "no cluster: lookup finds nothing, as in helm template"
    assert data["fromYaml"] == "1"
    assert data["sprig"] == "1,2,3"


def test_required_and_fail_stop_the_render(tmp_path: Path) -> None:
    chart = _chart(tmp_path, "a: ''\n", '{{ required "a is required" .Values.a }}\n')
    result = helm_template(chart=chart)
    assert result.returncode != 0
    assert "a is required" in result.stderr


def test_unknown_functions_are_refused(tmp_path: Path) -> None:
    chart = _chart(tmp_path, "{}\n", '{{ env "HOME" }}\n')
    result = helm_template(chart=chart)
    assert result.returncode != 0
    assert 'function "env" not defined' in result.stderr
