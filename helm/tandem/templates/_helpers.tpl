{{/* Names, labels and the pieces every tandem pod shares. */}}

{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tandem.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tandem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tandem.labels" -}}
helm.sh/chart: {{ include "tandem.chart" . }}
{{ include "tandem.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tandem
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The URL of the bus: bus.url, or the client Service of the bundled NATS chart (a short name:
every pod, edges on the host network included, resolves it in its own namespace).
*/}}
{{- define "tandem.natsUrl" -}}
{{- if .Values.bus.url -}}
{{- .Values.bus.url -}}
{{- else if .Values.nats.enabled -}}
{{- $nats := "" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- $nats = .Values.nats.fullnameOverride -}}
{{- else if contains "nats" .Release.Name -}}
{{- $nats = .Release.Name -}}
{{- else -}}
{{- $nats = printf "%s-nats" .Release.Name -}}
{{- end -}}
{{- printf "nats://%s:4222" ($nats | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- required "bus.url is required when nats.enabled=false" .Values.bus.url -}}
{{- end -}}
{{- end -}}

{{- define "tandem.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tandem.apiTokenSecret" -}}
{{- default (printf "%s-api-token" (include "tandem.fullname" .)) .Values.apiToken.existingSecret -}}
{{- end -}}

{{- define "tandem.natsCredsSecret" -}}
{{- default (printf "%s-nats-creds" (include "tandem.fullname" .)) .Values.bus.credentials.existingSecret -}}
{{- end -}}

{{- define "tandem.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "tandem.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}

{{- define "tandem.hasCredentials" -}}
{{- if or .Values.credentials.existingSecret .Values.credentials.passwords -}}true{{- end -}}
{{- end -}}

{{/* The edges' own secrets: the TLS files and the trunks' credentials, read-only. */}}
{{- define "tandem.edgeVolumeMounts" -}}
{{- if .Values.tls.existingSecret }}
- name: tls
  mountPath: /etc/tandem/tls
  readOnly: true
{{- end }}
{{- if include "tandem.hasCredentials" . }}
- name: credentials
  mountPath: /etc/tandem/credentials
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tandem.edgeVolumes" -}}
{{- with .Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- if include "tandem.hasCredentials" . }}
- name: credentials
  secret:
    secretName: {{ include "tandem.credentialsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "tandem.hasNatsCreds" -}}
{{- if or .Values.bus.credentials.existingSecret .Values.bus.credentials.content -}}true{{- end -}}
{{- end -}}

{{/* The process configuration file (the ConfigMap's tandem.yaml). */}}
{{- define "tandem.configFile" -}}
{{- $tls := dict -}}
{{- if .Values.tls.existingSecret -}}
{{- $tls = dict "cert" "/etc/tandem/tls/tls.crt" "key" "/etc/tandem/tls/tls.key" -}}
{{- with .Values.tls.caKey }}{{ $_ := set $tls "ca" (printf "/etc/tandem/tls/%s" .) }}{{ end -}}
{{- end -}}
{{- $edges := list -}}
{{- range .Values.edges.instances -}}
{{- $edge := dict "id" .id "sip" (printf "0.0.0.0:%d" (int .sipPort)) "api" (printf "0.0.0.0:%d" (int .apiPort)) -}}
{{- if .sipTlsPort -}}
{{- if not $tls -}}
{{- fail (printf "edges.instances[%s]: sipTlsPort needs tls.existingSecret (the edge's certificate)" .id) -}}
{{- end -}}
{{- $_ := set $edge "sip_tls" (printf "0.0.0.0:%d" (int .sipTlsPort)) -}}
{{- end -}}
{{- if $tls }}{{ $_ := set $edge "tls" $tls }}{{ end -}}
{{- $edges = append $edges $edge -}}
{{- end -}}
{{- $callstate := dict "api" "0.0.0.0:8080" "edge_lost_s" .Values.callstate.edgeLostSeconds -}}
{{- if and .Values.nats.enabled (gt (int .Values.bus.replicas) (int .Values.nats.config.cluster.replicas)) -}}
{{- fail (printf "bus.replicas: %d copies need as many NATS servers, and nats.config.cluster.replicas is %d" (int .Values.bus.replicas) (int .Values.nats.config.cluster.replicas)) -}}
{{- end -}}
{{- $nats := dict "url" (include "tandem.natsUrl" .) "replicas" (int .Values.bus.replicas) -}}
{{- $config := dict "nats" $nats "router" (dict "api" "0.0.0.0:8080") "callstate" $callstate "edges" $edges -}}
{{- $_ := set $config "telemetry" (dict "mask_numbers" .Values.telemetry.maskNumbers) -}}
{{- $routerUrl := printf "http://%s-router:8080" (include "tandem.fullname" .) -}}
{{- $_ = set $config "console" (dict "router_url" $routerUrl) -}}
{{- with .Values.dns.nameservers -}}
{{- $_ = set $config "dns" (dict "nameservers" . "timeout_s" $.Values.dns.timeoutSeconds) -}}
{{- end -}}
{{- $_ = set $config "pstn_usages" .Values.policy.pstnUsages -}}
{{- $_ = set $config "trunks" .Values.policy.trunks -}}
{{- $_ = set $config "routes" .Values.policy.routes -}}
{{- with .Values.media.rtpengine.extra -}}
{{- $_ = set $config "media" (dict "rtpengine" .) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Pod annotations that roll the pods when their configuration or secrets change. The secret
checksum covers the values, not the rendered Secret: a generated token differs per render.
*/}}
{{- define "tandem.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ toJson (list .Values.apiToken .Values.bus.credentials) | sha256sum }}
{{- end -}}

{{/*
Environment shared by every process. Call with (dict "root" $ "service" "router").
*/}}
{{- define "tandem.env" -}}
{{- $root := .root -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: TANDEM_NATS_URL
  value: {{ include "tandem.natsUrl" $root | quote }}
{{- if include "tandem.hasNatsCreds" $root }}
- name: TANDEM_NATS_CREDS
  value: /etc/tandem/nats/{{ $root.Values.bus.credentials.key }}
{{- end }}
- name: TANDEM_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "tandem.apiTokenSecret" $root }}
      key: token
{{- with $root.Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "tandem-%s" .service | quote }}
{{- $attrs := list "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" "k8s.node.name=$(NODE_NAME)" -}}
{{- range $k, $v := $root.Values.telemetry.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) -}}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end -}}

{{- define "tandem.volumeMounts" -}}
- name: config
  mountPath: /etc/tandem/config
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if include "tandem.hasNatsCreds" . }}
- name: nats-creds
  mountPath: /etc/tandem/nats
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tandem.volumes" -}}
- name: config
  configMap:
    name: {{ include "tandem.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "tandem.hasNatsCreds" . }}
- name: nats-creds
  secret:
    secretName: {{ include "tandem.natsCredsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Probes on the process's API port (a named container port). */}}
{{- define "tandem.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: api
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: api
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: api
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end -}}
