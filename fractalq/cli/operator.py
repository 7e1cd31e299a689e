"""``fractalq operator``: the kopf operator, configured by flags or environment.

Each flag overrides its ``FRACTALQ_*`` variable (the rows of
:data:`fractalq.cli.table.OPERATOR`); the settings are read and checked here,
once, and handed to the handlers in kopf's memo. Anything else is an option of
``kopf run`` (``-A``, ``-n NS``, ``--standalone``, ``--liveness URL``,
``--verbose``...), parsed by kopf's own command line and passed to
:func:`kopf.run`; ``--log-format`` is fractalq's (text or json), not kopf's.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from fractalq import logs, options
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command, resolve_now
from fractalq.endpoint import ENV_TOKEN


def add_parsers(commands: Any) -> None:
    parser = command(
        commands,
        "operator",
        run_operator,
        help="run the Kubernetes operator (other options go to kopf run)",
    )
    options.add(parser, *t.OPERATOR)
    options.add(parser, *t.LOGS, title=t.LOGS_TITLE)
    # Options resolve in run_operator, after the extra's check: without kopf the
    # command says so, whatever else is missing.
    parser.set_defaults(passthrough=True, resolve_late=True)


def kopf_options(extra: list[str]) -> dict[str, Any]:
    """``kopf run``'s options, parsed by kopf's own command (its checks, its messages)."""
    import click
    import kopf.cli

    try:
        context = kopf.cli.run.make_context(
            "fractalq operator", list(extra), auto_envvar_prefix="KOPF_RUN"
        )
    except click.exceptions.Exit as done:  # --help
        raise SystemExit(done.exit_code) from None
    except click.ClickException as error:
        raise CommandError(f"kopf run: {error.format_message()}") from None
    given: dict[str, Any] = dict(context.params)
    if given.pop("paths", ()) or given.pop("modules", ()):
        raise CommandError("fractalq operator runs its own handlers (no -m or paths)")
    if given.pop("dev", False):
        given["priority"] = 666  # as kopf run --dev
    if given["namespaces"] and given["clusterwide"]:
        raise CommandError("either --namespace or --all-namespaces, not both")
    return given


# Where kopf and the Kubernetes client come from when they are missing.
MISSING_EXTRA = (
    "needs the operator extra (kopf and the Kubernetes client): "
    "pip install 'fractalq[operator]', or run the fractalq-operator image"
)


def run_operator(args: argparse.Namespace) -> int:
    try:
        import click  # noqa: F401 - kopf's, for kopf_options
        import kopf
        import kubernetes  # noqa: F401 - the handlers' API calls
    except ImportError:
        raise CommandError(MISSING_EXTRA) from None
    resolve_now(args)

    from fractalq.operator.settings import OperatorSettings, SettingsError

    values = {option.dest: getattr(args, option.dest) for option in t.OPERATOR}
    try:
        settings = OperatorSettings.from_values(values, os.environ.get(ENV_TOKEN))
    except SettingsError as error:
        raise CommandError(str(error)) from None
    kopf_run = kopf_options(args.extra)
    debug, verbose, quiet = (kopf_run.pop(name) for name in ("debug", "verbose", "quiet"))
    kopf_run.pop("log_format")  # fractalq's --log-format took the flag
    kopf.configure(
        debug=debug,
        log_format=kopf.LogFormat.FULL,
        log_refkey=kopf_run.pop("log_refkey"),
        log_prefix=kopf_run.pop("log_prefix"),
    )
    # --log-level and --log-format as for every long-running command; kopf's own
    # --debug, --verbose and --quiet still work. JSON lines are fractalq's (the
    # Kubernetes object under "object"), text lines kopf's, prefixed with it.
    level = "debug" if debug or verbose else "warning" if quiet else args.log_level
    logging.getLogger().setLevel(logs.LEVELS[level])
    if args.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logs.JsonLines())
    from fractalq.coordinator.refusals import INVALID, Refusals
    from fractalq.security.logs import protect_logs
    from fractalq.weblog import SERVER_LOGGER, ClientErrorFilter

    protect_logs([settings.token or ""])  # kopf's handlers are set up now
    # The liveness port (kopf's aiohttp server): a malformed request is one
    # rate-limited line, not a traceback.
    refusals = Refusals(logger=logging.getLogger("fractalq.operator"))
    quiet_server = ClientErrorFilter(lambda what: refusals.refused(INVALID, what))
    logging.getLogger(SERVER_LOGGER).addFilter(quiet_server)
    from fractalq.operator import handlers  # registers the handlers with kopf

    kopf.run(memo=kopf.Memo({handlers.SETTINGS_KEY: settings}), **kopf_run)
    return 0
