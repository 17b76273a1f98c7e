{{/*
Names, labels and images shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "connhealth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when
it already contains the chart name, else `<release>-<chart>`. Cluster-scoped
objects are named from it too, so that each release has its own.
*/}}
{{- define "connhealth.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Names of the agent's and the operator's objects. The prefix is cut at 54
characters so that `-operator` still fits a 63-character DNS label.
*/}}
{{- define "connhealth.agent.fullname" -}}
{{- printf "%s-agent" (include "connhealth.fullname" .) }}
{{- end }}
{{- define "connhealth.operator.fullname" -}}
{{- printf "%s-operator" (include "connhealth.fullname" .) }}
{{- end }}

{{/* The Lease the operator replicas elect a leader with. */}}
{{- define "connhealth.operator.leaseName" -}}
{{- include "connhealth.operator.fullname" . }}
{{- end }}

{{/* ServiceAccount names. */}}
{{- define "connhealth.agent.serviceAccountName" -}}
{{- default (include "connhealth.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- end }}
{{- define "connhealth.operator.serviceAccountName" -}}
{{- default (include "connhealth.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{/*
Metrics Service names: the workload's name (so also the default Prometheus
`job` label a ServiceMonitor gives).
*/}}
{{- define "connhealth.agent.metricsServiceName" -}}
{{- include "connhealth.agent.fullname" . }}
{{- end }}
{{- define "connhealth.operator.metricsServiceName" -}}
{{- include "connhealth.operator.fullname" . }}
{{- end }}

{{- define "connhealth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "connhealth.labels" -}}
helm.sh/chart: {{ include "connhealth.chart" . }}
{{ include "connhealth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: connhealth
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select a release's objects (stable across upgrades). */}}
{{- define "connhealth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "connhealth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "connhealth.agent.selectorLabels" -}}
{{ include "connhealth.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}
{{- define "connhealth.operator.selectorLabels" -}}
{{ include "connhealth.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "connhealth.agent.labels" -}}
{{ include "connhealth.labels" . }}
app.kubernetes.io/component: agent
{{- end }}
{{- define "connhealth.operator.labels" -}}
{{ include "connhealth.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
An image reference: `[registry/]repository@digest` when the component has a
digest (a released chart pins its images so), else
`[registry/]repository:tag`. Call with
(dict "root" $ "image" .Values.agent.image).
*/}}
{{- define "connhealth.image" -}}
{{- $registry := .root.Values.image.registry | trimSuffix "/" }}
{{- $repository := .image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" $registry .image.repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Whether the ConnectionHealthPolicy API exists where helm renders. */}}
{{- define "connhealth.policyApiAvailable" -}}
{{- if .Capabilities.APIVersions.Has "connhealth.io/v1alpha1/ConnectionHealthPolicy" }}true{{ end }}
{{- end }}

{{/*
A listen address `host:port` from a `metrics` value (`bindAddress`, `port`);
IPv6 hosts get brackets.
*/}}
{{- define "connhealth.listenAddress" -}}
{{- if contains ":" .bindAddress }}
{{- printf "[%s]:%v" (.bindAddress | trimPrefix "[" | trimSuffix "]") .port }}
{{- else }}
{{- printf "%s:%v" .bindAddress .port }}
{{- end }}
{{- end }}
