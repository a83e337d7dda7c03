{{/* The image of one of our binaries: <registry>/<name>:<tag>. */}}
{{- define "inflight.image" -}}
{{ .root.Values.image.registry }}/{{ .name }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* The labels every object of the release carries; `app` selects a part's pods. */}}
{{- define "inflight.labels" -}}
app: {{ .name }}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: inflight
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version }}
{{- end -}}

{{/*
What the `restricted` Pod Security Standard asks of a container, and a read-only root: the
images are FROM scratch (or distroless) with one static binary and no user database, so the
user is a number.
*/}}
{{- define "inflight.securityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The environment of every component: its logs, and who it is (the downward API). */}}
{{- define "inflight.env" -}}
- name: RUST_LOG
  value: {{ .Values.log.level | quote }}
- name: INFLIGHT_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: NO_COLOR
  value: "1"
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- end -}}

{{/*
The pod-level settings of every part: never injected (the components are not workloads inflight
scales), spread over nodes where there are several, and the ServiceAccount of the part.
*/}}
{{- define "inflight.pod" -}}
serviceAccountName: {{ .name }}
securityContext:
  runAsNonRoot: true
  seccompProfile:
    type: RuntimeDefault
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              app: {{ .name }}
{{- end -}}

{{/* The aggregators' report address: every replica behind the headless Service. */}}
{{- define "inflight.ingest" -}}
http://inflight-aggregator-ingest.{{ .Release.Namespace }}.svc:9090
{{- end -}}

{{/* One replica may be away at a time (a drain, an upgrade), never all. */}}
{{- define "inflight.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "inflight.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app: {{ .name }}
{{- end -}}
