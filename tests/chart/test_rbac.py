"""The operator's RBAC: exactly what it needs, and only the operator gets a token."""

from __future__ import annotations

import json

import pytest

from chart.rendering import (
    CHART,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    Doc,
    Helm,
    container_of,
    objects,
    one,
    pod_specs,
    sets,
)


def rule(
    groups: list[str], resources: list[str], verbs: list[str], names: list[str] | None = None
) -> Doc:
    found: Doc = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names is not None:
        found["resourceNames"] = names
    return found


def normalised(rules: list[Doc]) -> list[str]:
    return sorted(
        json.dumps({key: sorted(value) for key, value in r.items()}, sort_keys=True) for r in rules
    )


def fractaljob_rules() -> list[Doc]:
    return [
        rule(["fractalq.dev"], ["fractaljobs"], ["get", "list", "watch", "patch", "update"]),
        rule(["fractalq.dev"], ["fractaljobs/status"], ["patch", "update"]),
        rule([""], ["events"], ["create", "patch"]),
        rule(["events.k8s.io"], ["events"], ["create", "patch"]),
    ]


def scale_rules(worker: str) -> list[Doc]:
    return [
        rule(["apps"], ["deployments/scale"], ["get", "patch", "update"], [worker]),
        rule(["apps"], ["deployments"], ["get"], [worker]),
    ]


CRD_RULES = [rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"])]


@pytest.mark.parametrize("option", ["defaults", "fullname-override", "watch-all-namespaces"])
def test_rbac_grants_exactly_what_the_operator_needs(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    worker = one(docs, "Deployment", "worker")["metadata"]["name"]
    role = one(docs, "Role")
    cluster_role = one(docs, "ClusterRole")
    if option == "watch-all-namespaces":
        expected_role, expected_cluster = scale_rules(worker), CRD_RULES + fractaljob_rules()
    else:
        expected_role, expected_cluster = fractaljob_rules() + scale_rules(worker), CRD_RULES
    assert normalised(role["rules"]) == normalised(expected_role)
    assert normalised(cluster_role["rules"]) == normalised(expected_cluster)
    # And never a wildcard.
    for r in role["rules"] + cluster_role["rules"]:
        assert "*" not in r["verbs"] + r["resources"] + r["apiGroups"]

    operator_pod = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert operator_pod["serviceAccountName"] == account
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [subject]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    cluster_binding = one(docs, "ClusterRoleBinding")
    assert cluster_binding["subjects"] == [subject]
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    # Cluster-scoped names carry the namespace: two releases of one name can coexist.
    assert NAMESPACE in cluster_role["metadata"]["name"]
    assert "--standalone" in container_of(docs, "Deployment", "operator")["args"]


def test_bring_your_own_service_account_and_rbac(chart_helm: Helm) -> None:
    docs = chart_helm.template(
        *sets(
            "operator.serviceAccount.create=false",
            "operator.serviceAccount.name=ops",
            "operator.rbac.create=false",
        )
    )
    for kind in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
        assert not objects(docs, kind), kind
    assert (
        one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["serviceAccountName"]
        == "ops"
    )
    result = chart_helm.run(
        "template", RELEASE, str(CHART), *sets("operator.serviceAccount.create=false")
    )
    assert result.returncode != 0 and "operator.serviceAccount.name" in result.stderr


@pytest.mark.parametrize(
    "assignments",
    [
        ("worker.autoscaling.enabled=false",),
        ("worker.autoscaling.enabled=false", "worker.autoscaling.keda.enabled=true"),
        ("worker.autoscaling.enabled=false", "operator.watchAllNamespaces=true"),
    ],
    ids=["fixed replicas", "KEDA", "KEDA watching every namespace"],
)
def test_without_the_builtin_autoscaler_the_operator_may_not_scale(
    chart_helm: Helm, assignments: tuple[str, ...]
) -> None:
    docs = chart_helm.template(*sets(*assignments))
    rules = [
        r for role in objects(docs, "Role") + objects(docs, "ClusterRole") for r in role["rules"]
    ]
    assert not [r for r in rules if "apps" in r["apiGroups"]]
    if "operator.watchAllNamespaces=true" in assignments:
        # Nothing left for a Role: none is rendered, nor its binding.
        assert not objects(docs, "Role") and not objects(docs, "RoleBinding")
        assert normalised(one(docs, "ClusterRole")["rules"]) == normalised(
            CRD_RULES + fractaljob_rules()
        )
    else:
        assert normalised(one(docs, "Role")["rules"]) == normalised(fractaljob_rules())


def test_only_the_operator_gets_a_service_account_token(chart_helm: Helm) -> None:
    for workload, pod in pod_specs(chart_helm.template()):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "operator":
            assert pod.get("automountServiceAccountToken", True)
        else:
            assert pod["automountServiceAccountToken"] is False, component
