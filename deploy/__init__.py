"""Deployment: the container images (`python -m deploy.image`) and the Kubernetes manifests (k8s/)."""
