{{/* The release's base name: the release name, unless it already contains the chart's. */}}
{{- define "gpubridge.fullname" -}}
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

{{- define "gpubridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: gpubridge
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpubridge
{{- end -}}

{{/*
The operator's pods. Lease pods' NetworkPolicy lets them reach exactly these labels on the
collector port (src/workload/mod.rs, OPERATOR_POD_LABELS), so they are fixed, not nameOverride.
*/}}
{{- define "gpubridge.selectorLabels" -}}
app.kubernetes.io/name: gpubridge
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every label of the operator's pods and of what selects them: the common ones and the component. */}}
{{- define "gpubridge.operatorLabels" -}}
{{ include "gpubridge.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "gpubridge.serviceAccountName" -}}
{{- include "gpubridge.fullname" . -}}
{{- end -}}

{{/* The identity the API server sees for the operator: what the admission policy trusts. */}}
{{- define "gpubridge.operatorUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "gpubridge.serviceAccountName" .) -}}
{{- end -}}

{{- define "gpubridge.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "gpubridge.providerKeySecret" -}}
{{- default (printf "%s-provider-key" (include "gpubridge.fullname" .)) .Values.providerKey.existingSecret -}}
{{- end -}}

{{- define "gpubridge.collectorService" -}}
{{- printf "%s-collector" (include "gpubridge.fullname" .) -}}
{{- end -}}
