{{/* Names and labels shared by the templates. */}}

{{- define "datarun.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "datarun.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "datarun.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "datarun.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: datarun
{{- end -}}

{{- define "datarun.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datarun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "datarun.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "datarun.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "datarun.webhookServiceName" -}}
{{- printf "%s-webhook" (include "datarun.fullname" .) -}}
{{- end -}}

{{- define "datarun.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "datarun.fullname" .)) .Values.webhook.tls.secretName -}}
{{- end -}}

{{- define "datarun.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* The web view's pods are told apart from the operator's by their component label. */}}
{{- define "datarun.webSelectorLabels" -}}
app.kubernetes.io/name: {{ include "datarun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: web
{{- end -}}

{{- define "datarun.webLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "datarun.webSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: datarun
{{- end -}}

{{/*
DATARUN_INDEX for the operator and the web view: from a Secret key (a DSN with a password stays
out of every manifest) or the plain index.url; nothing when neither is set.
*/}}
{{- define "datarun.indexEnv" -}}
{{- if and .Values.index.url .Values.index.urlSecret }}
{{- fail "index: set index.url or index.urlSecret, not both (a URL with a password belongs in the Secret)" }}
{{- end }}
{{- if .Values.index.urlSecret }}
- name: DATARUN_INDEX
  valueFrom:
    secretKeyRef:
      name: {{ .Values.index.urlSecret }}
      key: {{ .Values.index.urlSecretKey }}
{{- else if .Values.index.url }}
- name: DATARUN_INDEX
  value: {{ .Values.index.url | quote }}
{{- end }}
{{- end }}
