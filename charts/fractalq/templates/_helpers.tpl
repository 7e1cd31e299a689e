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

{{/* The operator's image: the same tag, the repository with its extra packages. */}}
{{- define "fractalq.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
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

{{/* The coordinator Service's name from any namespace (KEDA's, Prometheus'); its certificate holds it. */}}
{{- define "fractalq.coordinator.serviceHost" -}}
{{- printf "%s.%s.svc" (include "fractalq.coordinator.fullname" .) .Release.Namespace }}
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

{{/*
Where and how one component's pods are scheduled: its nodeSelector, tolerations,
affinity, priorityClassName and topologySpreadConstraints (a constraint without a
labelSelector gets the component's own pod labels).
Call with (dict "ctx" $ "component" "worker" "values" .Values.worker).
*/}}
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
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- if .values.topologySpreadConstraints }}
{{- $selector := dict "matchLabels" (include "fractalq.selectorLabels" . | fromYaml) }}
{{- $constraints := list }}
{{- range .values.topologySpreadConstraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" $selector }}
{{- end }}
{{- $constraints = append $constraints $constraint }}
{{- end }}
topologySpreadConstraints:
  {{- toYaml $constraints | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A pod template's metadata. Labels: the component's, then its podLabels (the chart's
win: the selector must match them). Annotations: the security checksums of the pods
that mount certificates or tokens, then the component's podAnnotations, then the
chart's hints in .hints (a user's annotation may override a hint, never a checksum).
Call with (dict "ctx" $ "component" "worker" "values" .Values.worker "hints" (dict ...)).
*/}}
{{- define "fractalq.podMetadata" -}}
{{- $labels := merge (include "fractalq.labels" . | fromYaml) (.values.podLabels | default dict) }}
labels:
  {{- toYaml $labels | nindent 2 }}
{{- $checksums := dict }}
{{- if has .component (list "coordinator" "worker" "operator") }}
{{- $checksums = include "fractalq.security.checksums" . | fromYaml | default dict }}
{{- end }}
{{- $annotations := merge $checksums (deepCopy (.values.podAnnotations | default dict)) (.hints | default dict) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A container's env: the chart's own variables (.env, rendered YAML), then the
component's extraEnv; an extraEnv entry that repeats one of the chart's names is
refused (Kubernetes would keep the later one, silently replacing the chart's).
Call with (dict "env" (include ...) "values" .Values.worker "key" "worker.extraEnv").
*/}}
{{- define "fractalq.env" -}}
{{- $names := list }}
{{- range (.env | fromYamlArray) }}
{{- $names = append $names .name }}
{{- end }}
{{- .env | trim }}
{{- range .values.extraEnv }}
{{- if has .name $names }}
{{- fail (printf "%s: %s is set by the chart; change the value that sets it instead" $.key .name) }}
{{- end }}
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
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

{{/* ---- TLS ------------------------------------------------------------------------ */}}

{{/*
Where the certificates are mounted, in every pod that has them: the coordinator's
own (tls.crt, tls.key, ca.crt), or a client's (ca.crt, and tls.crt/tls.key under
mutual TLS). The token files: the coordinator's tokens file, a client's own token.
*/}}
{{- define "fractalq.tls.dir" -}}/etc/fractalq/tls{{- end }}
{{- define "fractalq.auth.tokensFile" -}}/etc/fractalq/auth/tokens{{- end }}
{{- define "fractalq.auth.tokenFile" -}}/etc/fractalq/token/token{{- end }}

{{/* Where the certificates come from: "existing", "certManager" or "generated" (by Helm). */}}
{{- define "fractalq.tls.source" -}}
{{- if .Values.tls.existingSecret }}existing
{{- else if .Values.tls.certManager.enabled }}certManager
{{- else }}generated
{{- end }}
{{- end }}

{{/* The coordinator's certificate Secret (tls.crt, tls.key, ca.crt). */}}
{{- define "fractalq.tls.secretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-coordinator-tls" (include "fractalq.fullname" .)) }}
{{- end }}

{{/*
The clients' Secret: ca.crt (and tls.crt/tls.key under mutual TLS). Helm's own
certificates always have one, so that workers never reference the coordinator's
key; cert-manager and existing Secrets have one under mutual TLS only.
*/}}
{{- define "fractalq.tls.clientSecretName" -}}
{{- $source := include "fractalq.tls.source" . }}
{{- if eq $source "existing" }}
{{- if .Values.tls.mutual }}
{{- required "tls.existingSecret with tls.mutual needs tls.existingClientSecret: a Secret with the clients' tls.crt, tls.key and ca.crt" .Values.tls.existingClientSecret }}
{{- end }}
{{- else if or (eq $source "generated") .Values.tls.mutual }}
{{- printf "%s-client-tls" (include "fractalq.fullname" .) }}
{{- end }}
{{- end }}

{{/*
A Secret whose ca.crt verifies the coordinator, for whoever reads only that key (the
ServiceMonitor, the notes): the clients' Secret, or the coordinator's when there is none.
*/}}
{{- define "fractalq.tls.caBundleSecretName" -}}
{{- include "fractalq.tls.clientSecretName" . | default (include "fractalq.tls.secretName" .) }}
{{- end }}

{{/*
The Secret KEDA trusts the coordinator from (ca.crt), with a client certificate of
its own (tls.crt, tls.key): KEDA's metrics-api trigger reads a CA only in its "tls"
mode, which wants one. The coordinator's HTTP port asks for no client certificate, so
it is never shown. Helm or cert-manager make it; with tls.existingSecret, it is the
clients' tls.existingClientSecret.
*/}}
{{- define "fractalq.tls.scalerSecretName" -}}
{{- if eq (include "fractalq.tls.source" .) "existing" }}
{{- required "worker.autoscaling.keda.enabled with tls.existingSecret needs tls.existingClientSecret: a Secret with ca.crt, tls.crt and tls.key, which KEDA uses to trust the coordinator" .Values.tls.existingClientSecret }}
{{- else }}
{{- printf "%s-scaler-tls" (include "fractalq.fullname" .) }}
{{- end }}
{{- end }}

{{/* The CA's Secret (certificate and key), of Helm's or cert-manager's own CA; no pod mounts it. */}}
{{- define "fractalq.tls.caSecretName" -}}
{{- printf "%s-ca" (include "fractalq.fullname" .) }}
{{- end }}

{{/* The coordinator certificate's DNS names, as a JSON list. */}}
{{- define "fractalq.tls.dnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $domain := .Values.clusterDomain }}
{{- $names := list }}
{{- range $service := list (include "fractalq.coordinator.fullname" .) (include "fractalq.coordinator.headless" .) }}
{{- $names = append $names $service }}
{{- $names = append $names (printf "%s.%s" $service $ns) }}
{{- $names = append $names (printf "%s.%s.svc" $service $ns) }}
{{- $names = append $names (printf "%s.%s.svc.%s" $service $ns $domain) }}
{{- end }}
{{- $pod := printf "%s-0.%s" (include "fractalq.coordinator.fullname" .) (include "fractalq.coordinator.headless" .) }}
{{- $names = append $names (printf "%s.%s.svc" $pod $ns) }}
{{- $names = append $names (printf "%s.%s.svc.%s" $pod $ns $domain) }}
{{- $names = append $names "localhost" }}
{{- concat $names .Values.tls.extraDnsNames | uniq | toJson }}
{{- end }}

{{/* The coordinator certificate's IP addresses, as a JSON list (a port-forward reaches 127.0.0.1). */}}
{{- define "fractalq.tls.ipAddresses" -}}
{{- concat (list "127.0.0.1" "::1") .Values.tls.extraIpAddresses | uniq | toJson }}
{{- end }}

{{/*
Helm's own certificates, made once per render and kept in .Values.tls.generatedNow
for every template that needs them (a second genCA would make a different CA).
Each one already in the cluster (lookup) is kept unless it expires within
tls.generated.renewDays, its CA was replaced, or (the server's) its names changed;
the Secrets' annotations record each one's expiry and the names' checksum.
helm template has no cluster: every render makes new ones.
*/}}
{{- define "fractalq.tls.generate" -}}
{{- if not (hasKey .Values.tls "generatedNow") }}
{{- $ns := .Release.Namespace }}
{{- $now := now | unixEpoch | atoi }}
{{- $renew := mul (int .Values.tls.generated.renewDays) 86400 }}
{{- $days := int .Values.tls.generated.validityDays }}
{{- $caDays := int .Values.tls.generated.caValidityDays }}
{{- $fullname := include "fractalq.fullname" . }}
{{- $dns := include "fractalq.tls.dnsNames" . | fromJsonArray }}
{{- $ips := include "fractalq.tls.ipAddresses" . | fromJsonArray }}
{{- $sans := printf "%s %s" (toJson $dns) (toJson $ips) | sha256sum }}
{{- $out := dict "sans" $sans }}
{{- /* The CA. */}}
{{- $old := lookup "v1" "Secret" $ns (include "fractalq.tls.caSecretName" .) | default dict }}
{{- $data := $old.data | default dict }}
{{- $expires := index (($old.metadata | default dict).annotations | default dict) "fractalq.dev/expires" | default "0" | atoi }}
{{- $ca := dict }}
{{- $newCA := true }}
{{- if and (index $data "tls.crt") (index $data "tls.key") (gt (sub $expires $now) $renew) }}
{{- $ca = buildCustomCert (index $data "tls.crt") (index $data "tls.key") }}
{{- $newCA = false }}
{{- else }}
{{- $ca = genCA (printf "%s CA" $fullname) $caDays }}
{{- $expires = add $now (mul $caDays 86400) }}
{{- end }}
{{- $_ := set $out "ca" (dict "cert" $ca.Cert "key" $ca.Key "expires" $expires) }}
{{- /* The coordinator's certificate. */}}
{{- $old = lookup "v1" "Secret" $ns (include "fractalq.tls.secretName" .) | default dict }}
{{- $data = $old.data | default dict }}
{{- $annotations := ($old.metadata | default dict).annotations | default dict }}
{{- $expires = index $annotations "fractalq.dev/expires" | default "0" | atoi }}
{{- if and (not $newCA) (index $data "tls.crt") (index $data "tls.key") (gt (sub $expires $now) $renew) (eq (index $annotations "fractalq.dev/names" | default "") $sans) }}
{{- $_ := set $out "server" (dict "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) "expires" $expires) }}
{{- else }}
{{- $cert := genSignedCert (include "fractalq.coordinator.fullname" .) $ips $dns $days $ca }}
{{- $_ := set $out "server" (dict "cert" $cert.Cert "key" $cert.Key "expires" (add $now (mul $days 86400))) }}
{{- end }}
{{- /* Client certificates: the clients' (mutual TLS) and KEDA's scaler's. */}}
{{- $clients := dict }}
{{- if .Values.tls.mutual }}
{{- $_ := set $clients "client" (include "fractalq.tls.clientSecretName" .) }}
{{- end }}
{{- if .Values.worker.autoscaling.keda.enabled }}
{{- $_ := set $clients "scaler" (include "fractalq.tls.scalerSecretName" .) }}
{{- end }}
{{- range $role, $secret := $clients }}
{{- $old = lookup "v1" "Secret" $ns $secret | default dict }}
{{- $data = $old.data | default dict }}
{{- $expires = index (($old.metadata | default dict).annotations | default dict) "fractalq.dev/expires" | default "0" | atoi }}
{{- if and (not $newCA) (index $data "tls.crt") (index $data "tls.key") (gt (sub $expires $now) $renew) }}
{{- $_ := set $out $role (dict "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) "expires" $expires) }}
{{- else }}
{{- $cert := genSignedCert (printf "%s-%s" $fullname $role) nil nil $days $ca }}
{{- $_ := set $out $role (dict "cert" $cert.Cert "key" $cert.Key "expires" (add $now (mul $days 86400))) }}
{{- end }}
{{- end }}
{{- $_ := set .Values.tls "generatedNow" $out }}
{{- end }}
{{- end }}

{{/*
Pod annotations that change when a pod's certificates or token change, so that a
renewal or a new token restarts exactly the pods that use them. Checksums only:
never a key or a token. Call with (dict "ctx" $ "component" "worker").
*/}}
{{- define "fractalq.security.checksums" -}}
{{- $ := .ctx }}
{{- if and $.Values.tls.enabled (eq (include "fractalq.tls.source" $) "generated") }}
{{- include "fractalq.tls.generate" $ }}
{{- $g := $.Values.tls.generatedNow }}
{{- if eq .component "coordinator" }}
checksum/tls: {{ printf "%s%s" $g.ca.cert $g.server.cert | sha256sum | quote }}
{{- else }}
checksum/tls: {{ printf "%s%s" $g.ca.cert (($g.client | default dict).cert | default "") | sha256sum | quote }}
{{- end }}
{{- end }}
{{- if $.Values.auth.enabled }}
{{- include "fractalq.auth.generate" $ }}
{{- $tokens := $.Values.auth.generatedNow }}
{{- if eq .component "coordinator" }}
checksum/auth: {{ include "fractalq.auth.file" $ | sha256sum | quote }}
{{- else if eq .component "worker" }}
checksum/auth: {{ $tokens.worker | sha256sum | quote }}
{{- else if eq .component "operator" }}
checksum/auth: {{ $tokens.client | sha256sum | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The volumes a client pod (worker, operator) reads TLS and its token from;
call with (dict "ctx" $ "role" "worker").
*/}}
{{- define "fractalq.client.volumes" -}}
{{- $ := .ctx }}
{{- if $.Values.tls.enabled }}
{{- $client := include "fractalq.tls.clientSecretName" $ }}
- name: tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ $client | default (include "fractalq.tls.secretName" $) }}
          items:
            - key: ca.crt
              path: ca.crt
            {{- if $.Values.tls.mutual }}
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
            {{- end }}
{{- end }}
{{- if $.Values.auth.enabled }}
- name: token
  secret:
    secretName: {{ include "fractalq.auth.tokenSecretName" (dict "ctx" $ "role" .role) }}
    defaultMode: 0440
    items:
      - key: token
        path: {{ base (include "fractalq.auth.tokenFile" $) }}
{{- end }}
{{- end }}

{{/* The mounts of those volumes. */}}
{{- define "fractalq.client.volumeMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "fractalq.tls.dir" . }}
  readOnly: true
{{- end }}
{{- if .Values.auth.enabled }}
- name: token
  mountPath: {{ include "fractalq.auth.tokenFile" . | dir }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The FRACTALQ_* variables that point a client at those files. */}}
{{- define "fractalq.client.env" -}}
{{- $dir := include "fractalq.tls.dir" . }}
{{- if .Values.tls.enabled }}
- name: FRACTALQ_TLS_CA
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- if .Values.tls.mutual }}
- name: FRACTALQ_TLS_CERT
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: FRACTALQ_TLS_KEY
  value: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: FRACTALQ_TOKEN_FILE
  value: {{ include "fractalq.auth.tokenFile" . | quote }}
{{- end }}
{{- end }}

{{/* ---- tokens --------------------------------------------------------------------- */}}

{{- define "fractalq.auth.roles" -}}
{{- list "worker" "client" "reader" "admin" | toJson }}
{{- end }}

{{/* The Secret holding one role's token (key "token"); call with (dict "ctx" $ "role" "reader"). */}}
{{- define "fractalq.auth.tokenSecretName" -}}
{{- printf "%s-%s-token" (include "fractalq.fullname" .ctx) .role }}
{{- end }}

{{/* The Secret holding the coordinator's tokens file (key "tokens"). */}}
{{- define "fractalq.auth.tokensSecretName" -}}
{{- printf "%s-auth-tokens" (include "fractalq.fullname" .) }}
{{- end }}

{{/*
One random token per role, made once per render into .Values.auth.generatedNow;
a role's token already in the cluster (lookup of its Secret) is kept, so upgrades
change nothing. To rotate one: delete its Secret and upgrade.
*/}}
{{- define "fractalq.auth.generate" -}}
{{- if not (hasKey .Values.auth "generatedNow") }}
{{- $tokens := dict }}
{{- range $role := include "fractalq.auth.roles" . | fromJsonArray }}
{{- $name := include "fractalq.auth.tokenSecretName" (dict "ctx" $ "role" $role) }}
{{- $old := (lookup "v1" "Secret" $.Release.Namespace $name).data | default dict }}
{{- $_ := set $tokens $role (index $old "token" | default "" | b64dec | default (randAlphaNum 40)) }}
{{- end }}
{{- $_ := set .Values.auth "generatedNow" $tokens }}
{{- end }}
{{- end }}

{{/* The coordinator's --auth-tokens file: one "ROLE TOKEN NAME" line per role, each
holder named after its role (what `fractalq jobs` shows as a job's owner). */}}
{{- define "fractalq.auth.file" -}}
{{- include "fractalq.auth.generate" . }}
{{- $tokens := .Values.auth.generatedNow -}}
# fractalq role tokens (ROLE TOKEN NAME), made by the Helm chart; each role's own
# Secret holds the same token.
{{- range $role := include "fractalq.auth.roles" . | fromJsonArray }}
{{ $role }} {{ index $tokens $role }} {{ $role }}
{{- end }}
{{ end }}
