"""Shared plumbing for the Hydra entry points: where conf/ lives, and one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = Path(os.environ.get("MUSICGEN_CONF_DIR", PROJECT_ROOT / "conf"))

# Errors a user can cause (bad option, bad file, bad checkpoint): printed as one line, exit code 1.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError)


class UserError(Exception):
    """A problem with the user's input, already phrased for them."""


def require_known_keys(cls: type, values: Mapping[str, Any], what: str, list_known: bool = False,
                       error: type[Exception] = UserError) -> None:
    """Raise `error` naming the keys of `values` that are not fields of the dataclass `cls`.

    One check for every options dataclass (tokenizer, generate, evaluate), so a typo in any option is reported
    the same way instead of surfacing as a TypeError from the constructor.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        hint = f" (known: {', '.join(sorted(known))})" if list_known else ""
        raise error(f"unknown {what} option(s): {', '.join(unknown)}{hint}")


def report_user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run `func`; a user error becomes `error: <message>` on stderr and exit code 1 (no traceback).

    Set MUSICGEN_DEBUG=1 to see the full traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (UserError, *USER_ERRORS) as exc:
            if os.environ.get("MUSICGEN_DEBUG"):
                raise
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            print(f"error: {' '.join(message.split())}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def hydra_main(config_name: str = "config") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`hydra.main` bound to the project's conf/ folder, with user errors reported on one line."""
    import hydra

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(
            report_user_errors(func))

    return decorate
