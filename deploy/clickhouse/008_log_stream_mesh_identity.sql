-- Stream labels for logs that arrive without a service.name, computed from the mesh identity the collector
-- resolved at insert (Mesh* columns). Istio's OpenTelemetry access logger sends no resource attributes
-- (disable_builtin_labels; ../shared/reference/mesh.md §2.3), so without this its access logs would all share
-- the empty stream {} that no LogQL selector can name. They get service_name (the mesh app), and the namespace,
-- deployment and pod names Loki 3 would have taken from the resource, each only where the resource lacks it.
-- Supersedes the expression added by 004 (MODIFY COLUMN changes metadata only; parts already written keep
-- their labels).
ALTER TABLE ${DB}.otel_logs ${ON_CLUSTER}
    MODIFY COLUMN StreamLabels Map(LowCardinality(String), String) MATERIALIZED mapSort(mapConcat(
        mapApply((k, v) -> (replaceRegexpAll(k, '[^A-Za-z0-9_]', '_'), v),
            mapFilter((k, v) -> v != '' AND if(ScopeName = 'loki-push',
                    k != 'service.name' OR NOT mapContains(ResourceAttributes, 'service_name'),
                    k IN ('service.name', 'service.namespace', 'service.instance.id', 'deployment.environment',
                          'deployment.environment.name', 'cloud.region', 'cloud.availability_zone',
                          'k8s.cluster.name', 'k8s.namespace.name', 'k8s.pod.name', 'k8s.container.name',
                          'container.name', 'k8s.replicaset.name', 'k8s.deployment.name', 'k8s.statefulset.name',
                          'k8s.daemonset.name', 'k8s.cronjob.name', 'k8s.job.name')),
                ResourceAttributes)),
        if(ScopeName = 'loki-push' OR ResourceAttributes['service.name'] != '' OR MeshApp = '',
            map(),
            mapFilter((k, v) -> v != '',
                map('service_name', MeshApp,
                    'k8s_namespace_name', if(ResourceAttributes['k8s.namespace.name'] = '', MeshNamespace, ''),
                    'k8s_deployment_name', if(ResourceAttributes['k8s.deployment.name'] = '', MeshWorkload, ''),
                    'k8s_pod_name', if(ResourceAttributes['k8s.pod.name'] = '', LogAttributes['pod'], '')))),
        if(ScopeName = 'loki-push' OR (SeverityNumber = 0 AND SeverityText = ''),
            map(),
            map('level', multiIf(SeverityNumber = 0, lower(SeverityText), SeverityNumber <= 4, 'trace',
                                 SeverityNumber <= 8, 'debug', SeverityNumber <= 12, 'info',
                                 SeverityNumber <= 16, 'warn', SeverityNumber <= 20, 'error', 'fatal')))))
        CODEC(ZSTD(1));
