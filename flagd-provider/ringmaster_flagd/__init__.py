"""Ringmaster's OpenFeature provider for apps (distribution `ringmaster-flagd-provider`).

Only the distribution exists so far; the provider itself (in-process flagd evaluation fed by the
Ringmaster service) is the work of the flags issue. Until then, apps can evaluate the documents
served at /api/v1/cohort-sets/{name}/flagd with any flagd provider.
"""

__version__ = "0.1.0"
