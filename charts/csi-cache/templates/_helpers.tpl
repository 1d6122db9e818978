{{/* Names and labels. */}}

{{- define "csi-cache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "csi-cache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "csi-cache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "csi-cache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-cache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "csi-cache.labels" -}}
helm.sh/chart: {{ include "csi-cache.chart" . }}
{{ include "csi-cache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: csi-cache
{{- end }}

{{- define "csi-cache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-node" (include "csi-cache.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference "repository:tag" from {repository, tag}; the tag must be set. */}}
{{- define "csi-cache.image" -}}
{{- printf "%s:%s" .repository (required (printf "a tag is required for image %s" .repository) .tag) }}
{{- end }}

{{- define "csi-cache.pluginImage" -}}
{{- include "csi-cache.image" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{/* Paths. The plugin socket directory is where kubelet looks for the driver. */}}

{{- define "csi-cache.socketDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName }}
{{- end }}

{{- define "csi-cache.registrationDir" -}}
{{- printf "%s/plugins_registry" (trimSuffix "/" .Values.kubeletDir) }}
{{- end }}

{{- define "csi-cache.dataDir" -}}
{{- trimSuffix "/" .Values.dataDir }}
{{- end }}

{{- define "csi-cache.cacheDevice" -}}
{{- default (printf "%s/cache.img" (include "csi-cache.dataDir" .)) .Values.cache.device }}
{{- end }}

{{- define "csi-cache.backingDir" -}}
{{- default (printf "%s/backing" (include "csi-cache.dataDir" .)) (trimSuffix "/" .Values.backing.dir) }}
{{- end }}

{{- define "csi-cache.stateDir" -}}
{{- printf "%s/state" (include "csi-cache.dataDir" .) }}
{{- end }}

{{/*
Host directories the plugin needs besides dataDir and /dev, as a JSON list: the
directory of a cache file and the backing directory, each unless it lies under
dataDir or /dev (those are mounted already).
*/}}
{{- define "csi-cache.extraHostDirs" -}}
{{- $data := printf "%s/" (include "csi-cache.dataDir" .) }}
{{- $dirs := list }}
{{- $device := include "csi-cache.cacheDevice" . }}
{{- if not (hasPrefix "/dev/" $device) }}
{{- $dirs = append $dirs (dir $device) }}
{{- end }}
{{- $dirs = append $dirs (include "csi-cache.backingDir" .) }}
{{- $out := list }}
{{- range $dirs }}
{{- if and (not (hasPrefix $data (printf "%s/" .))) (not (has . $out)) }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The socket every container uses, inside the pod. */}}
{{- define "csi-cache.csiAddress" -}}
/csi/csi.sock
{{- end }}
