"""xinfd-echo: the example engine plugin of xinfd.

``xinfd_echo.plugin`` holds the engine object and its hooks, ``xinfd_echo.options`` its launch options (both
imported by the daemon, so they stay light); ``xinfd_echo.model`` holds the model object that the worker host
serves (imported only inside a replica). This package is also what ``EchoEngine.probe_module`` names:
importing it inside a model venv proves the engine's packages are usable there.
"""

__version__ = "0.1.0"
