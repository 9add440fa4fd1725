"""Which models the studio's page may choose: the one it was started with, any more given with ``--model``, and
the fine-tuned checkpoints it finds in ``runs/*/best.pt`` (what ``python -m musicgen.finetune my_midis/ --out
runs/mystyle`` writes).

Why a list of names and not a path from the page: a local server obeys only its own page, and even its own page
must not name files on disk; the page names one of these models, and the server maps the name to the path it
checked when it started (a damaged, crafted or NaN checkpoint is left out, with a log line, as ``--checkpoint``
would refuse it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import UserError

LOG = logging.getLogger("musicgen.studio")
#: where fine-tuned models are looked for, relative to the folder the studio is started in
RUNS_GLOB = "runs/*/best.pt"


def model_name(path: str | Path) -> str:
    """What the page shows: the file's name, with its folder for a run's ``best.pt`` (``mystyle/best.pt``)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.name in ("best.pt", "last.pt") else path.name


def find_models(default: str, extra: list[str] | tuple[str, ...] = (), discover: Path | None = None
                ) -> tuple[tuple[str, str], ...]:
    """(name, path) of each model the page may choose, ``default`` first. ``extra`` must load (a one-line
    UserError otherwise); what ``discover`` (a folder holding ``runs/``) finds is skipped when it does not."""
    from ..inference import load_checkpoint, resolve_checkpoint
    from ..inference.loader import check_model_fits

    models: dict[str, str] = {model_name(default): str(default)}

    def add(path: Path, strict: bool) -> None:
        try:
            check_model_fits(load_checkpoint(path))
        except (ValueError, OSError) as exc:
            if strict:
                raise UserError(f"--model {path}: {exc}") from None
            LOG.warning("left out %s: %s", path, exc)
            return
        name = model_name(path)
        if name in models and Path(models[name]).resolve() != path.resolve():
            name = str(path)
        models.setdefault(name, str(path))

    for path in extra:
        add(Path(resolve_checkpoint(path)), strict=True)
    if discover is not None:
        for path in sorted(Path(discover).glob(RUNS_GLOB)):
            add(path, strict=False)
    return tuple(models.items())


def pick_model(models: tuple[tuple[str, str], ...], name: str | None) -> str:
    """The path of the model the page named (its first, the default, when blank)."""
    if name is None or not str(name).strip():
        return models[0][1]
    for shown, path in models:
        if shown == str(name).strip():
            return path
    raise UserError(f"model={name!r}: not one of this studio's models ({', '.join(n for n, _ in models)}); "
                    "start it with --model PATH, or put the checkpoint in runs/<name>/best.pt")
