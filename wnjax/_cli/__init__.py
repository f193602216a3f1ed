"""The ``wnjax`` console script.

Each subcommand lives in its own module, listed in ``COMMANDS``; a module provides ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int | None``. Adding a command touches
that module and one line here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from wnjax._runtime.precision import in_float32

COMMANDS: dict[str, str] = {
    "demo": "wnjax._cli.demo",
    "equivalence": "wnjax._cli.equivalence",
    "reproduce": "wnjax._cli.reproduce",
    "sweep": "wnjax._cli.sweep",
    "asymptotics": "wnjax._cli.asymptotics",
    "problems": "wnjax._cli.problems",
}


# Seconds a command has to answer SIGINT/SIGTERM before the process is ended.
INTERRUPT_GRACE = 10.0

# A negative number as float() reads it: -3, -0.5, -.5, -1e4, -1.5E-3, -inf, -nan.
NEGATIVE_NUMBER = re.compile(
    r"^-(?:(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|inf|infinity|nan)$", re.IGNORECASE
)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reads a negative number in any notation as an option's
    value (``--target -1e4``), where argparse takes ``-1e4`` for an option of its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (argparse reports anything else as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def host_devices(args: argparse.Namespace, environ=os.environ) -> int | None:
    """How many CPU host devices to force: ``--devices N``; for ``wnjax sweep`` without it, one
    per core (the blocks of seeds then run on every core at once; GPUs are unaffected), unless
    ``XLA_FLAGS`` already sets a count or the run is multi-host."""
    devices = getattr(args, "devices", None)
    if devices:
        return devices
    if (
        getattr(args, "command", None) == "sweep"
        and not getattr(args, "coordinator", None)
        and "xla_force_host_platform_device_count" not in environ.get("XLA_FLAGS", "")
    ):
        return os.cpu_count() or 1
    return None


def _configure(args: argparse.Namespace) -> None:
    """Set JAX's precision and device count once, at the entry point (never at import)."""
    devices = host_devices(args)
    if devices:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        )
    os.environ.setdefault("MPLBACKEND", "Agg")
    import jax

    jax.config.update("jax_enable_x64", not getattr(args, "float32", False))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone (whose module is then the only one
    imported: a run of one command does not load the others' dependencies)."""
    parser = ArgumentParser(
        prog="wnjax",
        description="Implicit bias of gradient flow/descent on weight-normalized homogeneous nets.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if command is not None and name != command:
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--float32", action="store_true", help="run in float32 (default: float64)")
        p.add_argument("--debug", action="store_true", help="show the traceback of an error")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


@in_float32
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _configure(args)
    import wnjax._runtime.interrupt as _interrupt
    from wnjax._runtime.errors import WnjaxError

    try:
        # SIGINT/SIGTERM: commands stop at their next safe point and write what is finished;
        # one still busy after INTERRUPT_GRACE seconds (compiling) is ended. Exit 128 + signal.
        with _interrupt.handling(grace=INTERRUPT_GRACE):
            code = args._module.run(args)
    except KeyboardInterrupt:  # a second signal
        print("wnjax: interrupted", file=sys.stderr)
        return _interrupt.exit_code()
    except (WnjaxError, ValueError) as err:  # bad input: one line, unless --debug
        if getattr(args, "debug", False):
            raise
        print(f"wnjax: error: {err}", file=sys.stderr)
        return 2
    if _interrupt.requested():
        return _interrupt.exit_code()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
