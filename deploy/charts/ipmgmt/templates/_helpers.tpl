{{- define "ipmgmt.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ipmgmt.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "ipmgmt.labels" -}}
{{ include "ipmgmt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ipmgmt.serviceAccountName" -}}
{{- default (include "ipmgmt.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "ipmgmt.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ipmgmt.tlsSecretName" -}}
{{- if .Values.certManager.enabled -}}
{{- printf "%s-tls" (include "ipmgmt.fullname" .) -}}
{{- else -}}
{{- required "tls.secretName is required when certManager.enabled is false" .Values.tls.secretName -}}
{{- end -}}
{{- end -}}

{{/* matchConditions are GA (admissionregistration/v1) from Kubernetes 1.30. */}}
{{- define "ipmgmt.useMatchConditions" -}}
{{- $mode := toString .Values.webhook.matchConditions -}}
{{- if eq $mode "auto" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{ end -}}
{{- else if eq $mode "true" -}}
true
{{- end -}}
{{- end -}}

{{/* ValidatingAdmissionPolicy is GA (admissionregistration/v1) from 1.30. */}}
{{- define "ipmgmt.useValidatingPolicy" -}}
{{- if and .Values.validatingAdmissionPolicy.enabled (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) -}}
true
{{- end -}}
{{- end -}}

{{/* Namespaces the webhook and the policy never see. */}}
{{- define "ipmgmt.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- range (concat (list "kube-system" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq) }}
      - {{ . | quote }}
      {{- end }}
  {{- with .Values.webhook.namespaceSelectorExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The namespaceSelector above as a label selector string, for the reclaimer: it
releases only what was handed out in namespaces the webhook serves. */}}
{{- define "ipmgmt.namespaceLabelSelector" -}}
{{- $terms := list -}}
{{- range (include "ipmgmt.namespaceSelector" . | fromYaml).matchExpressions -}}
{{- $values := join "," (.values | default list) -}}
{{- if eq .operator "In" -}}
{{- $terms = append $terms (printf "%s in (%s)" .key $values) -}}
{{- else if eq .operator "NotIn" -}}
{{- $terms = append $terms (printf "%s notin (%s)" .key $values) -}}
{{- else if eq .operator "Exists" -}}
{{- $terms = append $terms .key -}}
{{- else if eq .operator "DoesNotExist" -}}
{{- $terms = append $terms (printf "!%s" .key) -}}
{{- else -}}
{{- fail (printf "webhook.namespaceSelectorExpressions: operator %q of key %q is not one of In, NotIn, Exists, DoesNotExist" .operator .key) -}}
{{- end -}}
{{- end -}}
{{- join "," $terms -}}
{{- end -}}

{{/* Pods sent to the webhook: never its own; without matchConditions, only opted-in ones. */}}
{{- define "ipmgmt.objectSelector" -}}
matchExpressions:
  - key: app.kubernetes.io/name
    operator: NotIn
    values: [{{ .Chart.Name | quote }}]
  {{- if not (include "ipmgmt.useMatchConditions" .) }}
  - key: {{ .Values.webhook.optInLabel | quote }}
    operator: In
    values: ["true"]
  {{- end }}
{{- end -}}

{{/* CEL: the pod carries the mode annotation. */}}
{{- define "ipmgmt.annotatedExpression" -}}
has(object.metadata.annotations) && 'ipmgmt.aws/mode' in object.metadata.annotations
{{- end -}}

{{/* The webhook's flags for what it injects, one quoted list item each. */}}
{{- define "ipmgmt.injectionArgs" -}}
{{- $i := .Values.injection -}}
{{- $aws := .Values.aws -}}
{{- $args := list
  (printf "--image=%s" (include "ipmgmt.image" (dict "root" . "image" .Values.image.ipmgr)))
  (printf "--image-pull-policy=%s" .Values.image.ipmgr.pullPolicy)
  (printf "--container-name=%s" $i.containerName)
  (printf "--default-mode=%s" $i.defaultMode)
  (printf "--startup-timeout-seconds=%v" $i.startupTimeoutSeconds)
  (printf "--ipmgr-release-timeout-seconds=%v" $i.releaseTimeoutSeconds)
  (printf "--run-as-user=%v" $i.runAsUser)
  (printf "--cpu-request=%v" $i.resources.requests.cpu)
  (printf "--memory-request=%v" $i.resources.requests.memory)
  (printf "--cpu-limit=%v" ($i.resources.limits.cpu | default ""))
  (printf "--memory-limit=%v" ($i.resources.limits.memory | default ""))
  (printf "--token-audience=%s" $aws.tokenAudience)
  (printf "--token-expiration-seconds=%v" $aws.tokenExpirationSeconds)
  (printf "--ipmgr-env=IPMGR_LOG_LEVEL=%s" $i.logLevel)
  (printf "--ipmgr-env=IPMGR_LOG_FORMAT=%s" $i.logFormat)
-}}
{{- if not $i.nativeSidecar }}{{ $args = append $args "--classic-sidecar" }}{{ end -}}
{{- with $aws.region }}{{ $args = append $args (printf "--region=%s" .) }}{{ end -}}
{{- with $aws.roleArn }}{{ $args = append $args (printf "--role-arn=%s" .) }}{{ end -}}
{{- with $aws.clusterTag }}{{ $args = append $args (printf "--ipmgr-env=IPMGR_CLUSTER_TAG=%s" .) }}{{ end -}}
{{- if $aws.imds.disabled }}{{ $args = append $args "--imds-disabled" }}{{ end -}}
{{- with $aws.imds.endpointMode }}{{ $args = append $args (printf "--imds-endpoint-mode=%s" .) }}{{ end -}}
{{- with $aws.imds.endpoint }}{{ $args = append $args (printf "--imds-endpoint=%s" .) }}{{ end -}}
{{- range $name, $value := $i.extraEnv }}{{ $args = append $args (printf "--ipmgr-env=%s=%v" $name $value) }}{{ end -}}
{{- range $args }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The ConfigMap in which the controller's address-range guard publishes its findings
for the webhook; empty when the guard does not run.
*/}}
{{- define "ipmgmt.guardConfigMap" -}}
{{- if and .Values.reclaimer.enabled .Values.reclaimer.guard.enabled -}}
{{- printf "%s-guard" (include "ipmgmt.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
