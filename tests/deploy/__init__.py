"""Checks of the container image, the helm chart and the plain Kubernetes manifests."""
