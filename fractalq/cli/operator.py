"""``fractalq operator``: the kopf operator, configured by flags or environment.

Each flag sets its ``FRACTALQ_*`` variable (see :mod:`fractalq.operator.settings`);
anything else is passed to ``kopf run`` (``-A``, ``-n NS``, ``--standalone``,
``--liveness URL``, ``--verbose``...).
"""

from __future__ import annotations

import argparse
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


def run_operator(args: argparse.Namespace) -> int:
    import kopf.cli

    from fractalq.operator.settings import VARIABLES, OperatorSettings, SettingsError

    for variable, _, _ in VARIABLES.values():
        value = getattr(args, variable, None)
        if value is not None:
            os.environ[variable] = value
    try:
        OperatorSettings.from_env()
    except SettingsError as error:
        raise CommandError(str(error)) from None
    kopf_args = ["run", "-m", "fractalq.operator.handlers", *args.extra]
    kopf.cli.main(args=kopf_args, prog_name="fractalq operator")
    return 0
