"""Shared plumbing for the Hydra entry points: where conf/ lives, and one-line errors for user mistakes (a bug
keeps its traceback)."""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = Path(os.environ.get("MUSICGEN_CONF_DIR", PROJECT_ROOT / "conf"))

# Errors a user can cause, printed as one line with exit code 1 (besides `UserError`): ValueError (a bad value,
# a damaged or foreign checkpoint, cache or index.tsv) and OSError (a missing file, no permission, a full disk).
# RuntimeError and KeyError are not among them: ours and torch's are bugs (a shape error, a missing key), and a
# bug shows its traceback. Where a user mistake surfaces as one of them (a checkpoint that cannot resume, a
# download that fails, a diverged run), the code that knows turns it into a `UserError` naming the file or
# option; running out of memory is the one RuntimeError reported as a line (`_out_of_memory`).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class UserError(Exception):
    """A problem with the user's input, already phrased for them."""


def _out_of_memory(exc: BaseException) -> str | None:
    """The short reason when `exc` is torch failing to allocate (a batch, length or number of samples too large
    for this machine: a limit of the settings, not a bug), else None. torch is only looked at when loaded."""
    text = " ".join(str(exc).split())
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if (isinstance(oom, type) and isinstance(exc, oom)) or (type(exc) is RuntimeError
                                                            and "MPS backend out of memory" in text):
        return ". ".join(text.split(". ")[:2])[:200]
    if type(exc) is RuntimeError and "can't allocate memory" in text:  # torch's CPU allocator
        return text[text.index("can't allocate memory"):].split(". ")[0][:200]
    return None


def _fail(message: str) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(1)


def report_user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run `func`; a user error (`UserError`, `USER_ERRORS`, running out of memory) becomes `error: <message>` on
    stderr and exit code 1 (no traceback). Anything else is a bug and propagates with its traceback.

    Set MUSICGEN_DEBUG=1 to see the full traceback of a user error too.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (UserError, *USER_ERRORS) as exc:
            if os.environ.get("MUSICGEN_DEBUG"):
                raise
            _fail(str(exc))
        except RuntimeError as exc:
            reason = _out_of_memory(exc)
            if reason is None or os.environ.get("MUSICGEN_DEBUG"):
                raise
            _fail(f"out of memory ({reason}): lower the batch size, the sequence length or the number of samples "
                  "(or free the device)")
        except KeyboardInterrupt:  # Ctrl-C outside a loop that handles it (e.g. while preparing the data)
            if os.environ.get("MUSICGEN_DEBUG"):
                raise
            print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
            sys.exit(128 + 2)

    return wrapper


def _is_hydra_override(arg: str) -> bool:
    key = arg.lstrip("+~").split("=", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose `config_name` with the command line's overrides before Hydra does, so that a mistake is one
    `UserError` line instead of Hydra's 6-9 lines: an unknown key (`train.fo=1`), and a key added with `+`/`++`
    that the config does not have (`+train.foo=1` would be accepted by Hydra and read by nothing); and a run
    folder (`hydra.run.dir`) that cannot be created (Hydra's OSError traceback). Command lines with Hydra flags
    (`--multirun`, `-cn` ...) are left to Hydra."""
    overrides = [a for a in args if not _is_hydra_override(a)]
    if any(a.startswith("-") for a in args):
        return
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    missing = object()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            base = compose(config_name, overrides=[o for o in overrides if not o.startswith("+")])
            for override in overrides:
                key = override.lstrip("+").split("=", 1)[0]
                if override.startswith("+") and OmegaConf.select(base, key, default=missing) is missing:
                    raise UserError(f"{override}: there is no option {key} (conf/{config_name}.yaml and its groups "
                                    "document every option; a + adds a key that nothing reads)")
            full = compose(config_name, overrides=list(args), return_hydra_config=True)
            run_dir = OmegaConf.select(full, "hydra.run.dir")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - hydra.errors.ConfigCompositionException, OverrideParseException ...
        text = " ".join(str(exc).split("\n")[0].split())
        if text.startswith("Could not override '"):
            key = text.split("'")[1]
            given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
            text = f"{given}: there is no option {key} (conf/{config_name}.yaml and its groups document every option)"
        elif type(exc).__name__ == "OverrideParseException":  # names no override: find the one that fails
            bad = next((o for o in overrides if _unparsable(o)), None)
            text = f"{bad}: not a valid override ({text})" if bad else text
        raise UserError(text or type(exc).__name__) from None
    if run_dir and str(run_dir) != ".":
        check_writable_dir(str(run_dir), "hydra.run.dir")


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
    except Exception:  # noqa: BLE001 - any parse failure
        return True
    return False


def hydra_main(config_name: str = "config") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`hydra.main` bound to the project's conf/ folder, with user errors reported on one line (the command
    line's overrides included: `check_overrides`)."""
    import hydra

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        main = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(
            report_user_errors(func))

        @functools.wraps(main)
        def entry(*args: Any, **kwargs: Any) -> Any:
            report_user_errors(check_overrides)(config_name, sys.argv[1:])
            return main(*args, **kwargs)

        return entry

    return decorate


# --------------------------------------------------------------------------------------------------------- #
# Checks shared by every entry point: output folders, numeric options (devices: musicgen.inference.device)
# --------------------------------------------------------------------------------------------------------- #
def _option(option: str, value: Any) -> str:
    """`name=value` for config options, `--flag value` for command-line flags."""
    return f"{option} {value}" if option.startswith("-") else f"{option}={value}"


def check_writable_dir(path: str | Path, option: str) -> Path:
    """Fail now, not after the work, when `path` cannot become a writable folder (nothing is created).

    Walks up to the nearest existing ancestor: it must be a folder this process may write into.
    """
    target = Path(str(path)).expanduser()
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == target else f" ({probe} is a file)"
        raise UserError(f"{_option(option, path)}: not a folder{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{_option(option, path)}: no permission to write in {probe}")
    return target


def make_dir(path: str | Path, option: str) -> Path:
    """mkdir -p, an OSError (permission, read-only disk, a file in the way) becoming a one-line UserError."""
    target = Path(str(path)).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{_option(option, path)}: cannot create the folder ({exc.strerror or exc})") from None
    return target


def _number(name: str, value: Any, integer: bool) -> float | int:
    """`value` as an int/float, or a UserError naming the option (bools and non-numbers are refused)."""
    kind = "an integer" if integer else "a number"
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise UserError(f"{name} must be {kind}, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise UserError(f"{name} must be {kind}, got {value!r}")
    if isinstance(number, float) and not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if number != int(number):
            raise UserError(f"{name} must be an integer, got {value!r}")
        return int(number)
    return float(number)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False) -> int | None:
    """An integer option in [minimum, maximum]; a one-line UserError naming it otherwise."""
    if value is None:
        if allow_none:
            return None
        raise UserError(f"{name} must be an integer, got null")
    number = int(_number(name, value, integer=True))
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bound = (f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}") if minimum is not None \
            else f"<= {maximum}"
        raise UserError(f"{name} must be an integer {bound}{' or null' if allow_none else ''}, got {value!r}")
    return number


def check_float(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                exclusive_min: bool = False, allow_none: bool = False) -> float | None:
    """A finite number option (> or >= minimum, <= maximum); a one-line UserError naming it otherwise."""
    if value is None:
        if allow_none:
            return None
        raise UserError(f"{name} must be a number, got null")
    number = float(_number(name, value, integer=False))
    low_bad = minimum is not None and (number <= minimum if exclusive_min else number < minimum)
    if low_bad or (maximum is not None and number > maximum):
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if exclusive_min else '>='} {minimum:g}")
        if maximum is not None:
            parts.append(f"<= {maximum:g}")
        raise UserError(f"{name} must be a number {' and '.join(parts) or 'that is finite'}, got {value!r}")
    return number


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def check_bool(name: str, value: Any) -> bool:
    """A yes/no option: a bool, or one of true/false, yes/no, on/off, 1/0 (any case); a one-line UserError
    naming it otherwise (`allow_eos=no` once read as true, being a non-empty string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise UserError(f"{name} must be true or false (or yes/no, on/off, 1/0), got {value!r}")
