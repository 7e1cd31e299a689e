"""``fractalq operator``: the kopf operator, configured by flags or environment.

Each flag overrides its ``FRACTALQ_*`` variable (see :mod:`fractalq.operator.settings`);
the settings are read and checked here, once, and handed to the handlers in
kopf's memo. Anything else is an option of ``kopf run`` (``-A``, ``-n NS``,
``--standalone``, ``--liveness URL``, ``--verbose``...), parsed by kopf's own
command line and passed to :func:`kopf.run`.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from fractalq.cli.common import CommandError


def add_parsers(commands: Any) -> None:
    from fractalq.operator.settings import VARIABLES

    parser = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (other options go to kopf run)",
        description="Flags default to their environment variables.",
    )
    for flag, (variable, default, text) in VARIABLES.items():
        parser.add_argument(
            f"--{flag}", dest=variable, help=f"{text} (${variable}, default {default})"
        )
    parser.set_defaults(run=run_operator, passthrough=True)


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
    options: dict[str, Any] = dict(context.params)
    if options.pop("paths", ()) or options.pop("modules", ()):
        raise CommandError("fractalq operator runs its own handlers (no -m or paths)")
    if options.pop("dev", False):
        options["priority"] = 666  # as kopf run --dev
    if options["namespaces"] and options["clusterwide"]:
        raise CommandError("either --namespace or --all-namespaces, not both")
    return options


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

    from fractalq.operator.settings import VARIABLES, OperatorSettings, SettingsError

    flags = {
        variable: value
        for variable, _, _ in VARIABLES.values()
        if (value := getattr(args, variable, None)) is not None
    }
    try:
        settings = OperatorSettings.from_env({**os.environ, **flags})
    except SettingsError as error:
        raise CommandError(str(error)) from None
    options = kopf_options(args.extra)
    kopf.configure(
        debug=options.pop("debug"),
        verbose=options.pop("verbose"),
        quiet=options.pop("quiet"),
        log_format=options.pop("log_format"),
        log_refkey=options.pop("log_refkey"),
        log_prefix=options.pop("log_prefix"),
    )
    from fractalq.coordinator.refusals import INVALID, Refusals
    from fractalq.security.logs import protect_logs
    from fractalq.weblog import SERVER_LOGGER, ClientErrorFilter

    protect_logs([settings.token or ""])  # kopf's handlers are set up now
    # The liveness port (kopf's aiohttp server): a malformed request is one
    # rate-limited line, not a traceback.
    refusals = Refusals(logger=logging.getLogger("fractalq.operator"))
    quiet = ClientErrorFilter(lambda what: refusals.refused(INVALID, what))
    logging.getLogger(SERVER_LOGGER).addFilter(quiet)
    from fractalq.operator import handlers  # registers the handlers with kopf

    kopf.run(memo=kopf.Memo({handlers.SETTINGS_KEY: settings}), **options)
    return 0
