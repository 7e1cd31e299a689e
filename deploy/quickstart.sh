#!/usr/bin/env bash
# fractalq on a local Kubernetes: build the images (fractalq, and fractalq-operator for
# the operator), load them into kind (default) or minikube (--minikube), install the
# chart, render deploy/examples/fractaljob.yaml and print where the PNG is. Needs
# docker, kubectl, helm and kind or minikube.
#
#   deploy/quickstart.sh [--minikube]
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=dev
IMAGE=fractalq:$TAG
OPERATOR_IMAGE=fractalq-operator:$TAG
NAMESPACE=${NAMESPACE:-fractalq}
CLUSTER=fractalq

case "${1:-}" in
  "") runtime=kind ;;
  --minikube) runtime=minikube ;;
  *) echo "usage: $0 [--minikube]" >&2; exit 2 ;;
esac

docker build -f deploy/Dockerfile -t "$IMAGE" .
docker build -f deploy/Dockerfile --target operator -t "$OPERATOR_IMAGE" .

if [ "$runtime" = kind ]; then
  kind get clusters | grep -qx "$CLUSTER" ||
    kind create cluster --name "$CLUSTER" --config deploy/kind-config.yaml
  kubectl config use-context "kind-$CLUSTER"
  kind load docker-image "$IMAGE" "$OPERATOR_IMAGE" --name "$CLUSTER"
else
  minikube status > /dev/null 2>&1 || minikube start
  kubectl config use-context minikube
  minikube image load "$IMAGE"
  minikube image load "$OPERATOR_IMAGE"
fi

helm upgrade --install fractalq charts/fractalq \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.tag="$TAG" \
  --set operator.image.repository="${OPERATOR_IMAGE%:*}" \
  --wait --timeout 5m

kubectl apply -n "$NAMESPACE" -f deploy/examples/fractaljob.yaml
if ! kubectl wait -n "$NAMESPACE" --for=jsonpath='{.status.phase}'=Succeeded \
    fj/mandelbrot --timeout=10m; then
  kubectl get fj mandelbrot -n "$NAMESPACE" -o jsonpath='{.status.phase}: {.status.message}{"\n"}' >&2
  exit 1
fi
kubectl get fj -n "$NAMESPACE"
echo "url: $(kubectl get fj mandelbrot -n "$NAMESPACE" -o jsonpath='{.status.url}')"
echo "presigned: $(kubectl get fj mandelbrot -n "$NAMESPACE" -o jsonpath='{.status.presignedUrl}')"
