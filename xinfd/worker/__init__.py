"""The replica worker process: hosts an engine's model object behind an OpenAI-compatible HTTP API."""
