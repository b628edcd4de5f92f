{{/* The chart's name. */}}
{{- define "totes-cdc.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name: the release name when it already holds the chart name. */}}
{{- define "totes-cdc.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "totes-cdc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "totes-cdc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "totes-cdc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "totes-cdc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "totes-cdc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "totes-cdc.captureServiceAccount" -}}
{{- if .Values.capture.serviceAccount.create -}}
{{- default (printf "%s-capture" (include "totes-cdc.fullname" .)) .Values.capture.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.capture.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "totes-cdc.consumeServiceAccount" -}}
{{- if .Values.consume.serviceAccount.create -}}
{{- default (printf "%s-consume" (include "totes-cdc.fullname" .)) .Values.consume.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.consume.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The options every role reads: each config key as its TOTES_CDC_* variable, the URLs as
     files of the mounted Secret, the metrics address and the AWS region. */}}
{{- define "totes-cdc.env" -}}
- name: TOTES_CDC_SOURCE_URL_FILE
  value: {{ printf "/var/run/secrets/totes-cdc/urls/%s" .Values.urls.sourceUrlKey | quote }}
- name: TOTES_CDC_WAREHOUSE_URL_FILE
  value: {{ printf "/var/run/secrets/totes-cdc/urls/%s" .Values.urls.warehouseUrlKey | quote }}
- name: TOTES_CDC_METRICS_ADDR
  value: {{ printf "0.0.0.0:%v" .Values.metrics.port | quote }}
- name: AWS_REGION
  value: {{ .Values.aws.region | quote }}
{{- range $key, $value := .Values.config }}
- name: {{ printf "TOTES_CDC_%s" ($key | upper | replace "-" "_") }}
  value: {{ if kindIs "slice" $value }}{{ join "," $value | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- end -}}

{{- define "totes-cdc.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 10
  failureThreshold: 3
{{- end -}}

{{/* The URL Secret (files readable by the owner only) and the CA bundle, if any. */}}
{{- define "totes-cdc.secretVolumes" -}}
- name: urls
  secret:
    secretName: {{ .Values.urls.secretName }}
    defaultMode: 0400
{{- with .Values.tls.caBundle }}
{{- if .configMap }}
- name: ca
  configMap:
    name: {{ .configMap }}
{{- else if .secret }}
- name: ca
  secret:
    secretName: {{ .secret }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "totes-cdc.secretMounts" -}}
- name: urls
  mountPath: /var/run/secrets/totes-cdc/urls
  readOnly: true
{{- if or .Values.tls.caBundle.configMap .Values.tls.caBundle.secret }}
- name: ca
  mountPath: /etc/totes-cdc/ca
  readOnly: true
{{- end }}
{{- end -}}
