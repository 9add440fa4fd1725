"""A user mistake is one `error: ...` line and exit code 1; a bug keeps its traceback (issue 21, item 4).

`USER_ERRORS` no longer holds RuntimeError or KeyError: an internal shape error or a missing key in our code
propagates. The user mistakes that used to surface as one of them now raise `UserError` where they happen:
a checkpoint whose model config has a typo'd key (export), a checkpoint whose training state cannot be restored
(resume), a failed download, a diverged run; running out of memory stays one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.config import USER_ERRORS, UserError, report_user_errors
from musicgen.training.trainer import run_training

from support import REPO, TrainedRun, compose_cfg, env, run_cli, single_error_line


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------- #
# The wrapper: what is a line, what is a traceback
# --------------------------------------------------------------------------------------------------------- #
def test_user_errors_hold_no_runtime_or_key_error() -> None:
    for bug in (RuntimeError, KeyError, IndexError, TypeError, AttributeError):
        assert not any(issubclass(bug, kind) for kind in USER_ERRORS), (bug, USER_ERRORS)
    assert not issubclass(UserError, (RuntimeError, KeyError))


@pytest.mark.parametrize("bug", [RuntimeError("boom: mat1 and mat2 shapes cannot be multiplied"), KeyError("n_layer"),
                                 IndexError("list index out of range")])
def test_internal_bug_propagates_from_the_wrapper(bug: Exception, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MUSICGEN_DEBUG", raising=False)

    @report_user_errors
    def command() -> None:
        raise bug

    with pytest.raises(type(bug)) as caught:
        command()
    assert caught.value is bug
    assert not any(line.startswith("error:") for line in _stderr_lines(capsys))


def test_internal_bug_in_an_argparse_entry_point_propagates(tiny_checkpoint: Path, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    """`python -m musicgen.training.export`: a bug below it (here: the exporter raising RuntimeError) is not
    turned into `error: boom`."""
    from musicgen.training import export

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.delenv("MUSICGEN_DEBUG", raising=False)
    monkeypatch.setattr(export, "export_inference_checkpoint", boom)
    with pytest.raises(RuntimeError, match="^boom$"):
        export.main([str(tiny_checkpoint), str(tmp_path / "out.pt")])
    assert not any(line.startswith("error:") for line in _stderr_lines(capsys))
    assert not (tmp_path / "out.pt").exists()


_BUGGY_ENTRY = """
import runpy, sys
import {module} as target

def bug(*args, **kwargs):
    raise {error}

target.{name} = bug
sys.argv = [{script!r}, *{args!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script, module, name, error, args", [
    ("evaluate.py", "musicgen.evaluation.report", "evaluate", "RuntimeError('boom: an internal shape error')",
     ["checkpoint={ckpt}", "progress=false"]),
    ("train.py", "musicgen.training.trainer", "run_training", "KeyError('boom_missing_key')",
     ["logger=none", "hydra.run.dir={tmp}/run"]),
])
def test_internal_bug_in_a_hydra_entry_point_shows_its_traceback(script: str, module: str, name: str, error: str,
                                                                 args: list[str], tiny_checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    """A RuntimeError / KeyError raised under evaluate.py / train.py (a bug: the user's options are valid)
    ends the run with its traceback, not with a one-line `error:`."""
    args = [a.format(ckpt=tiny_checkpoint, tmp=tmp_path) for a in args]
    runner = tmp_path / "buggy.py"
    runner.write_text(_BUGGY_ENTRY.format(module=module, name=name, error=error, script=str(REPO / script),
                                          args=args))
    run_env = env()
    run_env.pop("MUSICGEN_DEBUG", None)
    proc = subprocess.run([sys.executable, str(runner)], cwd=tmp_path, env=run_env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr, proc.stderr[-3000:]
    assert ("RuntimeError: boom: an internal shape error" if "Runtime" in error else "KeyError: 'boom_missing_key'") \
        in proc.stderr, proc.stderr[-3000:]
    assert not any(line.startswith("error:") for line in proc.stderr.splitlines()), proc.stderr[-3000:]


def test_out_of_memory_is_still_one_line(capsys, monkeypatch) -> None:
    """Running out of memory is a limit of the settings (batch, length, samples), not a bug: one line."""
    monkeypatch.delenv("MUSICGEN_DEBUG", raising=False)

    @report_user_errors
    def cpu_bomb() -> None:
        torch.empty(2 ** 50, dtype=torch.uint8)  # 1 PiB: torch's CPU allocator refuses (a plain RuntimeError)

    @report_user_errors
    def cuda_oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                     "of 79.11 GiB of which 1.2 GiB is free.\nIncluding non-PyTorch memory ...")

    for command, reason in ((cpu_bomb, "can't allocate memory"), (cuda_oom, "Tried to allocate 20.00 GiB")):
        with pytest.raises(SystemExit) as exited:
            command()
        assert exited.value.code == 1
        lines = _stderr_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("error: out of memory (") and reason in lines[0], lines
        assert "batch size" in lines[0] and "GPU 0 has a total" not in lines[0]


def test_debug_variable_still_shows_a_user_errors_traceback(monkeypatch) -> None:
    monkeypatch.setenv("MUSICGEN_DEBUG", "1")

    @report_user_errors
    def command() -> None:
        raise UserError("seed must be an integer")

    with pytest.raises(UserError):
        command()


# --------------------------------------------------------------------------------------------------------- #
# User mistakes that used to go through KeyError / RuntimeError
# --------------------------------------------------------------------------------------------------------- #
def test_export_of_a_checkpoint_with_a_typo_in_its_model_config_is_one_line(tiny_checkpoint: Path, tmp_path: Path,
                                                                            capsys, monkeypatch) -> None:
    """A model config key typo (`n_layer`) used to reach the CLI as KeyError('unknown model config key')."""
    from musicgen.inference.parameters import positional_names_of_config
    from musicgen.training.export import main

    data = torch.load(tiny_checkpoint, weights_only=True)
    config = dict(data["model_config"])
    config["n_layer"] = config.pop("n_layers")
    with pytest.raises(ValueError, match=r"model\.n_layer\b"):  # what the export path meets: a typo named
        positional_names_of_config(config)
    bad = tmp_path / "typo.pt"
    torch.save({**data, "model_config": config}, bad)
    monkeypatch.delenv("MUSICGEN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        main([str(bad), str(tmp_path / "out.pt")])
    assert exited.value.code == 1
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {bad}: impossible model config"), lines
    assert "n_layer" in lines[0]
    assert not (tmp_path / "out.pt").exists()
    main([str(tiny_checkpoint), str(tmp_path / "good.pt")])  # an intact checkpoint still exports
    assert (tmp_path / "good.pt").is_file()


def test_failed_download_is_one_line_naming_the_url(tmp_path: Path, capsys, monkeypatch) -> None:
    """Used to be RuntimeError('cannot download POP909 ...'); a broken archive was a zipfile traceback."""
    from musicgen.data.download import download_pop909

    monkeypatch.delenv("MUSICGEN_DEBUG", raising=False)
    missing = (tmp_path / "missing.zip").as_uri()
    (tmp_path / "page.zip").write_text("<html>rate limited</html>")
    broken = (tmp_path / "page.zip").as_uri()
    for url, words in ((missing, "cannot download POP909 from"), (broken, "is not a complete zip archive")):
        with pytest.raises(UserError, match=words):
            download_pop909(tmp_path / "pop909", url=url)
        with pytest.raises(SystemExit) as exited:
            report_user_errors(download_pop909)(tmp_path / "pop909", url=url)
        assert exited.value.code == 1
        lines = _stderr_lines(capsys)  # the download's progress bar, then the error
        errors = [line for line in lines if "error" in line.lower()]
        assert errors == lines[-1:] and "Traceback" not in "".join(lines), lines
        assert lines[-1].startswith("error: data.download=true: ") and url in lines[-1], lines


def _damaged_run(tmp_path: Path, last: Path, damage) -> Path:
    """A checkpoint folder whose last.pt (otherwise intact) has been damaged by `damage(data)`."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    data = torch.load(last, weights_only=True)
    damage(data)
    torch.save(data, folder / "last.pt")
    return folder


def _rename_a_weight(data: dict) -> None:
    state = data["model_state"]
    name = next(iter(state))
    state[name + "_renamed"] = state.pop(name)


def test_resume_from_damaged_weights_is_a_user_error(trained_run: TrainedRun, tmp_path: Path) -> None:
    """The weights' names no longer match (model.load_state_dict raised RuntimeError: a traceback now)."""
    folder = _damaged_run(tmp_path, trained_run.last, _rename_a_weight)
    cfg = compose_cfg(trained_run.overrides(folder, trained_run.steps + 2, "train.resume=true"))
    with pytest.raises(UserError, match=rf"checkpoint {folder / 'last.pt'}: its training state cannot be restored "
                                        r"\(RuntimeError: .*Missing key"):
        run_training(cfg, tmp_path / "run", progress=False)


def test_resume_from_a_damaged_optimizer_state_is_one_line_on_the_command_line(trained_run: TrainedRun,
                                                                               tmp_path: Path) -> None:
    """The optimizer state lacks `param_groups` (torch raised KeyError): one `error:` line naming the file."""
    folder = _damaged_run(tmp_path, trained_run.last, lambda data: data["optimizer"].pop("param_groups"))
    args = [str(REPO / "train.py"), *trained_run.overrides(folder, trained_run.steps + 2, "train.resume=true"),
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, tmp_path, timeout=300)
    assert proc.returncode == 1
    line = single_error_line(proc)
    assert line.startswith(f"error: checkpoint {folder / 'last.pt'}: its training state cannot be restored "
                           "(KeyError: param_groups)"), line


def test_a_diverged_run_is_a_user_error(trained_run: TrainedRun, tmp_path: Path, monkeypatch) -> None:
    """A NaN loss (too high a learning rate) stopped the run with a RuntimeError subclass; now a UserError."""
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    cfg = compose_cfg(trained_run.overrides(tmp_path / "ckpt", 2))  # a fresh run on the shared run's cache
    with pytest.raises(UserError, match="loss is nan at step 1.*lower train.lr") as caught:
        run_training(cfg, tmp_path / "run", progress=False)
    assert not isinstance(caught.value, RuntimeError)
