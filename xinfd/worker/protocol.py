"""The OpenAI request/response protocol, as the worker host imports it.

The module lives in ``xinfd.openai_protocol``: the daemon's front end validates with the same functions before it
proxies, and the front end must not import the worker package. This name stays so worker code keeps its imports.
"""

from __future__ import annotations

from xinfd.openai_protocol import *  # noqa: F403  # re-export: this module is an alias of the protocol module
