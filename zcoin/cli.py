"""The ``zcoin`` command line: daemons (tracker, miner) and client commands.

Exit status: 0 on success, 1 when the action failed, 2 on bad usage.  Expected
errors are one line on stderr (``click.ClickException``), never a traceback.
"""

from __future__ import annotations

import click

from zcoin.log import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"], case_sensitive=False),
              help="Lowest level of log lines written to stderr.")
@click.option("--log-json", is_flag=True, help="Write log lines as JSON objects.")
@click.version_option(package_name="zcoin")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_json: bool) -> None:
    """zcoin: a peer-to-peer cryptocurrency cluster over ZeroMQ.

    \b
    Example: a tracker and a miner on loopback
      zcoin tracker --bind tcp://127.0.0.1:9000
      zcoin miner --tracker tcp://127.0.0.1:9000
    """
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    ctx.obj["log_json"] = log_json
    setup_logging(log_level, log_json, component=ctx.invoked_subcommand or "zcoin")


def main() -> None:
    """Console-script entry point."""
    cli(obj={})


if __name__ == "__main__":
    main()
