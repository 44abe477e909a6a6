{{/*
Names and labels.
*/}}
{{- define "outrigger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "outrigger.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "outrigger.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "outrigger.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "outrigger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outrigger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "outrigger.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "outrigger.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The Secret holding the Redis URL, if any.
*/}}
{{- define "outrigger.redisSecret" -}}
{{- if .Values.redis.existingSecret -}}
{{- .Values.redis.existingSecret -}}
{{- else if or .Values.redis.url .Values.redis.deploy -}}
{{- printf "%s-redis-url" (include "outrigger.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding the API token, if any.
*/}}
{{- define "outrigger.tokenSecret" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if .Values.auth.token -}}
{{- printf "%s-token" (include "outrigger.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The sidecar container: include it in `initContainers` (native sidecar,
sidecar.native=true) or in `containers` (classic). Takes the root context
of a release of this chart (or a context with the same .Values shape).

  initContainers:
    {{- include "outrigger.sidecar" . | nindent 4 }}
*/}}
{{- define "outrigger.sidecar" -}}
- name: outrigger
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  env:
    # Read by `serve` and by the operator commands alike, so that
    # `kubectl exec ... -c outrigger -- outrigger status` finds this
    # sidecar and its token with no flags.
    - name: OUTRIGGER_CONFIG
      value: /etc/outrigger/config/outrigger.toml
    - name: OUTRIGGER_HTTP__ADDR
      value: "127.0.0.1:{{ .Values.sidecar.ports.http }}"
    - name: OUTRIGGER_GRPC__ADDR
      value: "127.0.0.1:{{ .Values.sidecar.ports.grpc }}"
    - name: OUTRIGGER_OPS__ADDR
      value: "0.0.0.0:{{ .Values.sidecar.ports.ops }}"
    - name: OUTRIGGER_LOG__FORMAT
      value: {{ .Values.sidecar.logFormat | quote }}
    - name: OUTRIGGER_LOG__LEVEL
      value: {{ .Values.sidecar.logLevel | quote }}
    {{- if .Values.plugins.compileCache.enabled }}
    - name: OUTRIGGER_PLUGIN_CACHE
      value: /var/cache/outrigger/plugins
    {{- end }}
    {{- with (include "outrigger.redisSecret" .) }}
    - name: OUTRIGGER_REDIS__URL
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ if $.Values.redis.existingSecret }}{{ $.Values.redis.existingSecretKey }}{{ else }}url{{ end }}
    {{- end }}
    {{- with .Values.redis.passwordSecret }}
    - name: OUTRIGGER_REDIS__PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $.Values.redis.passwordSecretKey }}
    {{- end }}
    {{- if (include "outrigger.tokenSecret" .) }}
    - name: OUTRIGGER_AUTH__TOKEN_FILE
      value: /var/run/secrets/outrigger/token
    {{- end }}
    {{- with .Values.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: ops
      containerPort: {{ .Values.sidecar.ports.ops }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: ops
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /healthz
      port: ops
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: ops
    periodSeconds: 5
    failureThreshold: 2
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: outrigger-config
      mountPath: /etc/outrigger/config
      readOnly: true
    {{- if or .Values.plugins.configMap .Values.plugins.volume }}
    - name: outrigger-plugins
      mountPath: /etc/outrigger/plugins
      readOnly: true
    {{- end }}
    {{- if .Values.plugins.secret }}
    - name: outrigger-plugin-secrets
      mountPath: /etc/outrigger/plugin-secrets
      readOnly: true
    {{- end }}
    {{- if .Values.plugins.compileCache.enabled }}
    - name: outrigger-plugin-cache
      mountPath: /var/cache/outrigger/plugins
    {{- end }}
    {{- if (include "outrigger.tokenSecret" .) }}
    - name: outrigger-token
      mountPath: /var/run/secrets/outrigger
      readOnly: true
    {{- end }}
    {{- if .Values.redis.tls.secret }}
    - name: outrigger-redis-tls
      mountPath: /etc/outrigger/redis-tls
      readOnly: true
    {{- end }}
{{- end -}}

{{/*
The volumes the sidecar mounts: add them to the pod's `volumes`.
*/}}
{{- define "outrigger.volumes" -}}
- name: outrigger-config
  configMap:
    name: {{ include "outrigger.fullname" . }}-config
{{- if .Values.plugins.configMap }}
- name: outrigger-plugins
  configMap:
    name: {{ .Values.plugins.configMap }}
{{- else if .Values.plugins.volume }}
- name: outrigger-plugins
  {{- toYaml .Values.plugins.volume | nindent 2 }}
{{- end }}
{{- if .Values.plugins.secret }}
- name: outrigger-plugin-secrets
  secret:
    secretName: {{ .Values.plugins.secret }}
{{- end }}
{{- if .Values.plugins.compileCache.enabled }}
- name: outrigger-plugin-cache
  emptyDir:
    sizeLimit: {{ .Values.plugins.compileCache.sizeLimit | quote }}
{{- end }}
{{- with (include "outrigger.tokenSecret" .) }}
- name: outrigger-token
  secret:
    secretName: {{ . }}
    items:
      - key: token
        path: token
{{- end }}
{{- with .Values.redis.tls }}
{{- if .secret }}
- name: outrigger-redis-tls
  secret:
    secretName: {{ .secret }}
    items:
      {{- range (list .caKey .certKey .keyKey) }}
      {{- if . }}
      - key: {{ . | quote }}
        path: {{ . | quote }}
      {{- end }}
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Pod annotations for Prometheus scraping of the ops port.
*/}}
{{- define "outrigger.podAnnotations" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.sidecar.ports.ops | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
