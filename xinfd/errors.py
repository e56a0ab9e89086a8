"""The one error tree of xinfd.

Every error the daemon reports has a stable ``code`` (for scripts and the control API) and an HTTP status (for
the front end and the control socket). Handlers convert them to JSON in one place (``xinfd.http_errors``), for
the daemon and the worker alike.
"""

from __future__ import annotations


class XinfdError(Exception):
    """Base of all xinfd errors; ``code`` is stable, ``status`` is the HTTP status it maps to."""

    code = "internal_error"
    status = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(XinfdError):
    """A setting is invalid; the message names the key or environment variable."""

    code = "invalid_config"
    status = 400
    error_type = "invalid_request_error"


class InvalidRequestError(XinfdError):
    """A request is malformed or has an invalid field (``param`` names it)."""

    code = "invalid_request"
    status = 400
    error_type = "invalid_request_error"


class UnknownModelError(XinfdError):
    """No model (family or running uid) of that name."""

    code = "model_not_found"
    status = 404
    error_type = "invalid_request_error"


class UnknownEngineError(XinfdError):
    """No engine of that name is registered."""

    code = "engine_not_found"
    status = 404
    error_type = "invalid_request_error"


class UnsupportedEndpointError(XinfdError):
    """The model cannot serve this route (embeddings on a text model, chat on an embedding model)."""

    code = "unsupported_endpoint"
    status = 404
    error_type = "invalid_request_error"


class EngineUnavailableError(XinfdError):
    """The engine is registered but cannot serve this model here (the reason says why)."""

    code = "engine_unavailable"
    status = 409
    error_type = "invalid_request_error"


class ModelExistsError(XinfdError):
    """A model with that uid is already launched."""

    code = "model_exists"
    status = 409
    error_type = "invalid_request_error"


class ModelNotReadyError(XinfdError):
    """The model is still loading; the client should retry after ``retry_after`` seconds."""

    code = "model_not_ready"
    status = 503
    error_type = "server_error"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LaunchError(XinfdError):
    """A replica failed to start (the message carries the exit status and the last lines of its stderr)."""

    code = "launch_failed"
    status = 500
    error_type = "server_error"


class UpstreamError(XinfdError):
    """A replica failed while serving a request."""

    code = "upstream_error"
    status = 502
    error_type = "server_error"


class PluginError(XinfdError):
    """A plugin broke the contract (for example, returned the wrong type from a hook)."""

    code = "plugin_error"
    status = 500
    error_type = "server_error"


class ShuttingDownError(XinfdError):
    """The daemon is draining and accepts no new work."""

    code = "shutting_down"
    status = 503
    error_type = "server_error"


class PlacementError(XinfdError):
    """A launch or scale cannot be placed on the GPUs (too many asked, unknown index, no idle GPU)."""

    code = "placement_failed"
    status = 409
    error_type = "invalid_request_error"


class ImpossiblePlacementError(PlacementError):
    """A placement that no state of this host could satisfy (unknown GPU index, more GPUs than exist): the
    request itself is wrong, so it is a 400 (``xinfctl`` exit 2), unlike a busy GPU (409, retry later)."""

    code = "invalid_placement"
    status = 400


class TooManyRequestsError(XinfdError):
    """Every replica of the model is at its concurrency cap and the model's queue is full (HTTP 429)."""

    code = "too_many_requests"
    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DownloadError(XinfdError):
    """Weights could not be fetched from the hub (the message names the model, the source, the cause)."""

    code = "download_failed"
    status = 502
    error_type = "server_error"


class RequestTimeoutError(XinfdError):
    """The client did not send its request body within the deadline (HTTP 408)."""

    code = "request_timeout"
    status = 408
    error_type = "invalid_request_error"
