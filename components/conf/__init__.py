"""Pure renderers of the configuration files the platform deploys.

Shared by the GKE stack and the local platform.
"""
