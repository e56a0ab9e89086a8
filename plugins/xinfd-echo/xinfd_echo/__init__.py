"""xinfd-echo: the example engine plugin of xinfd.

``xinfd_echo.plugin`` holds the hook implementations (imported by the daemon, so it stays light);
``xinfd_echo.model`` holds the model object that the worker host serves (imported only inside a replica).
This package is also what ``EngineInfo.probe_module`` names: importing it inside a model venv proves the
engine's packages are usable there.
"""

__version__ = "0.1.0"
