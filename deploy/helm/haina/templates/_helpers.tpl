{{/* Chart name, trimmed to the 63 characters a label value allows. */}}
{{- define "haina.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, plus the chart name unless
the release name already holds it. */}}
{{- define "haina.fullname" -}}
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

{{- define "haina.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "haina.labels" -}}
helm.sh/chart: {{ include "haina.chart" . }}
app.kubernetes.io/name: {{ include "haina.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: haina
{{- end -}}

{{/* Selector labels; pass (dict "ctx" $ "component" "controller"). */}}
{{- define "haina.selectorLabels" -}}
app.kubernetes.io/name: {{ include "haina.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "haina.controllerName" -}}
{{- printf "%s-controller" (include "haina.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "haina.nodeName" -}}
{{- printf "%s-node" (include "haina.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "haina.controllerServiceAccount" -}}
{{- default (include "haina.controllerName" .) .Values.serviceAccount.controllerName -}}
{{- end -}}

{{- define "haina.nodeServiceAccount" -}}
{{- default (include "haina.nodeName" .) .Values.serviceAccount.nodeName -}}
{{- end -}}

{{- define "haina.configMapName" -}}
{{- printf "%s-config" (include "haina.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Cluster-scoped names carry the release namespace too, so two releases in
two namespaces do not collide. */}}
{{- define "haina.clusterName" -}}
{{- printf "%s-%s-%s" (include "haina.fullname" .ctx) .ctx.Release.Namespace .suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "haina.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "haina.sidecarImage" -}}
{{- printf "%s:%s" .image.repository .image.tag -}}
{{- end -}}

{{/* The plugin's socket: a directory under the kubelet's plugins dir named
after the driver, mounted at /csi in every container of a pod. */}}
{{- define "haina.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName -}}
{{- end -}}

{{- define "haina.socketPath" -}}/csi/csi.sock{{- end -}}

{{- define "haina.endpoint" -}}unix://{{ include "haina.socketPath" . }}{{- end -}}

{{/* A TOML value from a YAML value: strings quoted (JSON string escapes are
valid TOML basic-string escapes), lists as arrays, numbers and booleans as
themselves. */}}
{{- define "haina.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
[{{- range $i, $e := $v -}}{{- if $i }}, {{ end -}}{{- include "haina.tomlValue" $e -}}{{- end -}}]
{{- else if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- $v -}}
{{- else -}}
{{- fail (printf "config.pools: cannot render %v (%s) as a TOML value" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* Args common to every haina container. */}}
{{- define "haina.serveArgs" -}}
- serve
- --endpoint={{ include "haina.endpoint" . }}
- --node-id=$(NODE_ID)
- --data-dir={{ .Values.dataDir }}
- --config=/etc/haina/config.toml
- --metrics-address=0.0.0.0:{{ .Values.metrics.port }}
- --log-format={{ .Values.logFormat }}
{{- end -}}
