"""`dgae serve`: run the HTTP service with uvicorn.

Every ServiceSettings field has a flag (``max_batch_size`` -> ``--max-batch-size``); a flag wins
over its ``DGAE_*`` environment variable, which wins over the default. The resolved configuration
is logged at start (API keys redacted). SIGTERM drains: uvicorn stops accepting, in-flight requests
finish (up to ``shutdown_timeout_s``), the batchers stop, and the process exits 0.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import types
import typing

from pydantic import ValidationError

from dgae.errors import ConfigError

from service.core.settings import ENV_PREFIX, ServiceSettings

log = logging.getLogger(__name__)


def _flag_type(annotation) -> type:
    """int | None -> int; tuple[str, ...] (api keys, comma-separated) -> str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation if annotation in (int, float, str, bool) else str


def add_arguments(p: argparse.ArgumentParser) -> None:
    for name, field in ServiceSettings.model_fields.items():
        flag, kind = "--" + name.replace("_", "-"), _flag_type(field.annotation)
        help_text = f"{field.description or name} (env {ENV_PREFIX}{name.upper()}; default {field.default!r})"
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def build_settings(args: argparse.Namespace) -> ServiceSettings:
    given = {k: getattr(args, k) for k in ServiceSettings.model_fields if getattr(args, k, None) is not None}
    try:
        return ServiceSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(": ".join(filter(None, (".".join(map(str, e["loc"])), e["msg"]))) for e in exc.errors())
        raise ConfigError(f"invalid service configuration: {problems}") from None


def _drained(signum: int, _frame) -> None:
    """Uvicorn re-raises the signal it handled once it has drained; landing here means exit 0."""
    log.info("received %s; in-flight requests finished, exiting", signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - only the serve command needs the server stack

    from service.app import create_app  # noqa: PLC0415

    settings = build_settings(args)
    logging.getLogger().setLevel(settings.log_level.upper())
    log.info("resolved configuration: %s", json.dumps(settings.redacted(), sort_keys=True))
    app = create_app(settings)
    signal.signal(signal.SIGTERM, _drained)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=settings.shutdown_timeout_s)
    return 0
