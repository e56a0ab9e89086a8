"""Model virtual environments (issue 3): spec -> package list, uv builds, cache management, the provider.

``spec`` turns a model's ``virtualenv`` block into a hashed ``VenvSpec``; ``builder`` runs uv; ``cache`` owns
the on-disk layout, locks and metadata; ``provider.VenvProvider`` is the daemon's ``EnvironmentProvider``.
"""
