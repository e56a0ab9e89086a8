"""Model virtual environments: spec -> package list, uv builds, cache management, the provider.

``spec`` turns a model's ``virtualenv`` block into a hashed ``VenvSpec``; ``builder`` runs uv; ``cache`` owns
the on-disk layout, locks and metadata; ``provider.VenvProvider`` is the daemon's ``EnvironmentProvider``;
``python`` finds the interpreter a launch asks for (``--python``) and ``bundle`` copies xinfd and the engine's
plugin into a venv on another Python, which cannot share the daemon's compiled packages.
"""
