{{/* Prefix of every object name: "<release>-switchyard", or the release name when it
already says switchyard, or fullnameOverride. */}}
{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains "switchyard" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-switchyard" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "switchyard.selectorLabels" (list . "agent") */}}
{{- define "switchyard.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}

{{/* "true" when some ProxyConfig in values runs ebpf as its mode or a fallback; the
agent then gets BPF, PERFMON, SYS_ADMIN and a writable /sys/fs/bpf. */}}
{{- define "switchyard.ebpfEnabled" -}}
{{- $on := false -}}
{{- range .Values.proxyConfigs -}}
{{- if or (eq (toString .mode) "ebpf") (has "ebpf" (.fallback | default (list))) -}}
{{- $on = true -}}
{{- end -}}
{{- end -}}
{{- if $on -}}true{{- end -}}
{{- end -}}

{{/* "true" when a ProxyConfig uses ipvs as mode or fallback: the agent then loads the
IPVS modules itself (ip_vs, the scheduler's, nf_conntrack), as kube-proxy does, from the
host's /lib/modules (mounted read-only), which needs CAP_SYS_MODULE. */}}
{{- define "switchyard.ipvsEnabled" -}}
{{- $on := false -}}
{{- range .Values.proxyConfigs -}}
{{- if or (eq (toString .mode) "ipvs") (has "ipvs" (.fallback | default (list))) -}}
{{- $on = true -}}
{{- end -}}
{{- end -}}
{{- if $on -}}true{{- end -}}
{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/PORT pointing at the real API server, when configured. */}}
{{- define "switchyard.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | toString | quote }}
{{- end }}
{{- end -}}
