{{/*
Names, labels and shared pieces. Every helper is prefixed with the chart name.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "fractalq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else "<release>-<name>"
(just "<release>" when the release name already contains the chart name).
Kept to 40 characters so that "-coordinator-headless" still fits in 63.
*/}}
{{- define "fractalq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "fractalq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods of one component; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "fractalq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fractalq.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of one component's objects; same argument as fractalq.selectorLabels. */}}
{{- define "fractalq.labels" -}}
helm.sh/chart: {{ include "fractalq.chart" .ctx }}
{{ include "fractalq.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: fractalq
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The fractalq image, tag defaulting to the chart's appVersion. */}}
{{- define "fractalq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* Object names. */}}
{{- define "fractalq.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "fractalq.fullname" .) }}
{{- end }}

{{- define "fractalq.coordinator.headless" -}}
{{- printf "%s-coordinator-headless" (include "fractalq.fullname" .) }}
{{- end }}

{{/* host:port of the coordinator's gRPC Service, for the workers and the operator. */}}
{{- define "fractalq.coordinator.address" -}}
{{- printf "%s:%d" (include "fractalq.coordinator.fullname" .) (int .Values.coordinator.port) }}
{{- end }}

{{/* The worker Deployment's name: worker.nameOverride or "<fullname>-worker". */}}
{{- define "fractalq.worker.fullname" -}}
{{- if .Values.worker.nameOverride }}
{{- .Values.worker.nameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-worker" (include "fractalq.fullname" .) }}
{{- end }}
{{- end }}

{{- define "fractalq.operator.fullname" -}}
{{- printf "%s-operator" (include "fractalq.fullname" .) }}
{{- end }}

{{- define "fractalq.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "fractalq.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
A ClusterRole/ClusterRoleBinding name: cluster-scoped, so it carries the
namespace too (two releases of the same name in two namespaces must not clash).
*/}}
{{- define "fractalq.operator.clusterName" -}}
{{- printf "%s-%s-operator" .Release.Namespace (include "fractalq.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fractalq.minio.fullname" -}}
{{- printf "%s-minio" (include "fractalq.fullname" .) }}
{{- end }}

{{/* Whether the chart runs its own MinIO. */}}
{{- define "fractalq.minio.enabled" -}}
{{- if not .Values.storage.external.enabled }}true{{ end }}
{{- end }}

{{/* The Secret with the S3 endpoint, credentials and region. */}}
{{- define "fractalq.storage.secretName" -}}
{{- if .Values.storage.existingSecret }}
{{- .Values.storage.existingSecret }}
{{- else if .Values.storage.external.enabled }}
{{- fail "storage.external.enabled needs storage.existingSecret: the name of a Secret with the S3 endpoint and credentials" }}
{{- else }}
{{- printf "%s-storage" (include "fractalq.fullname" .) }}
{{- end }}
{{- end }}

{{/* s3://<bucket>/<prefix>: the --storage of the workers and FRACTALQ_STORAGE of the operator. */}}
{{- define "fractalq.storage.url" -}}
{{- if .Values.storage.prefix }}
{{- printf "s3://%s/%s" .Values.storage.bucket (trimAll "/" .Values.storage.prefix) }}
{{- else }}
{{- printf "s3://%s" .Values.storage.bucket }}
{{- end }}
{{- end }}

{{/* The in-cluster endpoint of the bundled MinIO. */}}
{{- define "fractalq.minio.endpoint" -}}
{{- printf "http://%s.%s.svc:%d" (include "fractalq.minio.fullname" .) .Release.Namespace (int .Values.storage.minio.port) }}
{{- end }}

{{/* The AWS_* variables of every fractalq container, all from the storage Secret. */}}
{{- define "fractalq.storage.env" -}}
{{- $secret := include "fractalq.storage.secretName" . -}}
- name: AWS_ENDPOINT_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.storage.secretKeys.endpoint }}
      optional: true
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.storage.secretKeys.accessKeyId }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.storage.secretKeys.secretAccessKey }}
- name: AWS_DEFAULT_REGION
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.storage.secretKeys.region }}
      optional: true
{{- end }}

{{/* Pod-level pieces every pod shares. */}}
{{- define "fractalq.podCommon" -}}
# No docker-link variables: a Service named "fractalq-coordinator" would otherwise
# put FRACTALQ_COORDINATOR_* variables into every container.
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Scheduling constraints of one component; call with (dict "values" .Values.worker). */}}
{{- define "fractalq.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
FractalJobs and events: in the release namespace (a Role) unless
operator.watchAllNamespaces (then a ClusterRole, since kopf -A watches every namespace).
*/}}
{{- define "fractalq.operator.jobRules" }}
# Watch FractalJobs and add/remove kopf's finalizer and annotations.
- apiGroups: ["fractalq.dev"]
  resources: ["fractaljobs"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Write phase, progress and URL.
- apiGroups: ["fractalq.dev"]
  resources: ["fractaljobs/status"]
  verbs: ["patch", "update"]
# kopf reports handler progress and errors as events (both events APIs).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
