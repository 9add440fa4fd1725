"""The recall head (musicgen/model/recall.py): one distribution in every form, constant memory, and it copies
what followed a matching context; ``train.train_only`` trains it alone on a frozen model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from musicgen.inference import load_checkpoint
from musicgen.inference.loader import parameter_floor
from musicgen.model import build_model
from musicgen.model.config import ModelConfig
from musicgen.training.trainer import run_training

from support import compose_cfg, small_cfg, step_all, tiny_train_overrides

VOCAB = 40


BAR, POSITIONS = 3, (10, 8)  # the toy vocabulary's Bar token and Position range (ids 10..17)


def _model(window: int, sentinel_bias: float = 0.0, seed: int = 0, clock: bool = False):
    torch.manual_seed(seed)
    cfg = small_cfg(dropout=0.0)
    cfg["attention"].update(decay="learned", feature_map="elu")
    cfg["recall"] = {"window": window, "key_dim": 8, "bar_clock": clock, "max_lag_bars": 4}
    model = build_model(cfg, VOCAB, time_markers=(BAR, *POSITIONS)).eval()
    with torch.no_grad():  # an untrained head barely copies; lower its sentinel so the head matters here
        model.recall.sentinel_bias.fill_(sentinel_bias)
        if clock:  # and give the bar lags scores of their own
            model.recall.lag.score.normal_()
    return model


def _bars(n_bars: int, seed: int) -> torch.Tensor:
    """Toy REMI-like rows: Bar, then Position / note-token pairs, bars of different lengths."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_bars):
        out.append(BAR)
        for _ in range(int(torch.randint(1, 5, (1,), generator=rng))):
            out += [POSITIONS[0] + int(torch.randint(0, POSITIONS[1], (1,), generator=rng)),
                    int(torch.randint(20, VOCAB, (1,), generator=rng))]
    return torch.tensor(out)


def _steps(model, x: torch.Tensor, seed: int, inference: bool) -> torch.Tensor:
    """Step by step, in inference mode (the lean step) or with gradients off only (the generic step)."""
    with torch.inference_mode() if inference else torch.no_grad():
        return step_all(model, x, seed)


@pytest.mark.parametrize("clock", [False, True], ids=["content", "bar_clock"])
@pytest.mark.parametrize("inference", [False, True], ids=["generic_step", "lean_step"])
def test_recurrent_form_matches_parallel_with_a_wrapping_ring(inference: bool, clock: bool) -> None:
    model = _model(window=12, clock=clock)
    x = torch.stack([_bars(12, 0)[:45], _bars(12, 1)[:45]])
    with torch.no_grad():
        parallel = model(x, generator=torch.Generator().manual_seed(3))
    stepped = _steps(model, x, 3, inference)
    assert torch.allclose(parallel, stepped, atol=1e-4), (parallel - stepped).abs().max()
    # normalised: the mixture is a distribution, whatever the gate
    assert torch.allclose(parallel.exp().sum(-1), torch.ones(2, 45), atol=1e-5)


@pytest.mark.parametrize("clock", [False, True], ids=["content", "bar_clock"])
def test_chunked_prefill_continues_the_ring(clock: bool) -> None:
    model = _model(window=12, clock=clock)
    x = _bars(12, 2)[:40].unsqueeze(0)
    with torch.no_grad():
        parallel = model(x, generator=torch.Generator().manual_seed(5))
        last, state = model.prefill(x[:, :30], generator=torch.Generator().manual_seed(5), chunk=7)
        assert torch.allclose(last[:, -1], parallel[:, 29], atol=1e-4)
        after = []
        for t in range(30, 40):
            logits, state = model.step(x[:, t], state)
            after.append(logits)
    assert torch.allclose(torch.stack(after, 1), parallel[:, 30:], atol=1e-4)
    assert state.recall.stored == 12  # the ring holds the window, no more: memory independent of length
    assert state.nbytes() == model.init_state(1).nbytes()


def test_the_head_copies_what_followed_a_matching_context() -> None:
    """A passage heard once: when its first tokens come back, the head moves probability to the token that
    followed them the first time (query and key start as one projection: similar states match)."""
    model = _model(window=64, sentinel_bias=-2.0)
    passage = torch.tensor([5, 9, 17, 23, 31, 7, 12, 29])
    filler = torch.randint(1, VOCAB, (20,), generator=torch.Generator().manual_seed(1))
    x = torch.cat([passage, filler, passage[:5]]).unsqueeze(0)
    with torch.no_grad():
        mixed = model(x, generator=torch.Generator().manual_seed(0))[0, -1]
        model.recall = None  # the same model without its head
        plain = torch.log_softmax(model(x, generator=torch.Generator().manual_seed(0))[0, -1], -1)
    follower = int(passage[5])
    assert mixed[follower] - plain[follower] > 1.0  # e-fold more likely at least
    assert mixed.argmax() == follower


def test_bar_clock_reads_bars_and_onsets_alike_in_both_forms() -> None:
    from musicgen.model.recall import BarClock

    clock = BarClock(BAR, *POSITIONS)
    x = torch.tensor([[1, BAR, 12, 30, 31, 15, 32, BAR, 33, 10, 34, BAR, BAR]])
    bar, onset = clock.parallel(x)
    assert bar[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4]
    assert onset[0].tolist() == [-1, -1, 2, 2, 2, 5, 5, -1, -1, 0, 0, -1, -1]
    b, o = torch.zeros(1, dtype=torch.long), torch.full((1,), -1)
    for t in range(x.shape[1]):
        b, o = clock.step(x[:, t], b, o)
        assert (int(b), int(o)) == (int(bar[0, t]), int(onset[0, t]))
    # a chunk continues the clock it is given
    bar2, onset2 = clock.parallel(x[:, 4:], bar[:, 3], onset[:, 3])
    assert torch.equal(bar2, bar[:, 4:]) and torch.equal(onset2, onset[:, 4:])


def test_bar_lag_score_makes_the_head_copy_from_that_many_bars_back() -> None:
    """With the score of "2 bars back, same onset" high, the next note is copied from two bars back, whatever
    the bars' lengths in tokens. (Two keys share that bar and onset, the Position and its note, so with no content
    preference the head splits its copy between their followers: the note, and what came after it.)"""
    model = _model(window=256, sentinel_bias=0.0, clock=True)
    with torch.no_grad():
        model.recall.lag.score.zero_()
        model.recall.lag.score[2, 1] = 12.0
        model.recall.query.weight.zero_()  # no content preference: time alone decides
    x = _bars(6, 7)
    bars = (x == BAR).nonzero().flatten().tolist()
    t = bars[5] + 1  # the first Position of bar 6 (0-based bar 5)
    # make bar 4 (two back) start at the same onset, so the aligned source exists
    x[t] = x[bars[3] + 1]
    with torch.no_grad():
        out = model(x[: t + 1].unsqueeze(0))[0, -1]
    note, after = int(x[bars[3] + 2]), int(x[bars[3] + 3])  # the note at that onset two bars back, and its follower
    p = out.exp()
    assert note != after and float(p[note]) > 0.45 and float(p[after]) > 0.45


def test_config_checks_and_size_floor() -> None:
    with pytest.raises(ValueError, match="recall"):
        ModelConfig.from_mapping({**small_cfg(), "recall": {"window": -1}}, VOCAB)
    with pytest.raises(ValueError, match="bar_clock needs"):  # no vocabulary to read Bar / Position ids from
        build_model({**small_cfg(), "recall": {"window": 8, "bar_clock": True}}, VOCAB)
    with pytest.raises(ValueError, match="inside the vocabulary"):
        ModelConfig.from_mapping({**small_cfg(), "recall": {"window": 8, "bar_clock": True, "bar_token": 3,
                                                             "position_first": 35, "position_count": 9}}, VOCAB)
    with_head = ModelConfig.from_mapping({**small_cfg(), "recall": {"window": 64, "key_dim": 8}}, VOCAB)
    without = ModelConfig.from_mapping(small_cfg(), VOCAB)
    assert parameter_floor(with_head) - parameter_floor(without) == 2 * 32 * 8


def test_train_only_trains_the_head_and_leaves_the_rest(pop909_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run_training(compose_cfg(tiny_train_overrides(pop909_dir, cache, tmp_path / "base", 2) + ["model.recall.window=0"]),
                 tmp_path / "r0", progress=False)  # a stack without a head
    source = load_checkpoint(tmp_path / "base" / "last.pt")
    tuned = compose_cfg(tiny_train_overrides(pop909_dir, cache, tmp_path / "head", 3)
                        + ["model.recall.window=64", "model.recall.key_dim=8", "train.lr=1e-2",
                           "train.train_only=[recall]", f"train.init_from={tmp_path / 'base' / 'last.pt'}"])
    run_training(tuned, tmp_path / "r1", progress=False)
    state = load_checkpoint(tmp_path / "head" / "last.pt").model_state
    for name, value in source.model_state.items():
        assert torch.equal(state[name].float(), value.float()), name
    # the sentinel starts at exactly zero and its bias at log(window) + 3 (RecallHead.reset_parameters)
    assert state["recall.sentinel"].abs().max() > 1e-4, "the head's parameters never left their initialisation"
    assert abs(float(state["recall.sentinel_bias"]) - (math.log(64) + 3.0)) > 1e-4
    bad = compose_cfg(tiny_train_overrides(pop909_dir, cache, tmp_path / "bad", 2) + ["train.train_only=[nothing]"])
    with pytest.raises(Exception, match="train.train_only"):
        run_training(bad, tmp_path / "r2", progress=False)


def test_a_checkpoint_whose_bar_clock_reads_other_tokens_is_refused(tmp_path: Path) -> None:
    """A bar clock pointed at tokens that are not the vocabulary's Bar / Position would give silently wrong
    lags: loading says so in one line instead."""
    from musicgen.inference import load_model

    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "musicgen-small.pt"
    data = torch.load(shipped, map_location="cpu", weights_only=True)
    if not data["model_config"]["recall"]["bar_clock"]:
        pytest.skip("the shipped model has no bar clock")
    data["model_config"]["recall"]["bar_token"] += 1
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    with pytest.raises(ValueError, match="bar clock reads tokens .*not its vocabulary's Bar"):
        load_model(bad, "cpu")


def test_focus_points_the_head_at_a_bar_lag() -> None:
    """A planned form's request (RecallMemory.focus_lag/focus_bonus) moves the copy mass onto the entries that
    many bars back: the tokens that followed them gain probability, whatever the head's own scores."""
    model = _model(window=64, sentinel_bias=-2.0, clock=True)
    x = _bars(8, seed=4)
    lag = 3

    def read(bonus: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token probabilities after x, the tokens that followed entries ``lag`` bars back)."""
        with torch.inference_mode():
            state = model.init_state(1, generator=torch.Generator().manual_seed(0))
            for token in x[:-1]:
                _, state = model.step(token.view(1), state)
            memory = state.recall
            followers = memory.follow[0][(memory.bar_now[0] - memory.bars[0]) == lag].clone()
            memory.focus_lag, memory.focus_bonus = (lag, bonus) if bonus is not None else (None, 0.0)
            logits, _ = model.step(x[-1:].view(1), state)
        return torch.softmax(logits[0], -1), torch.unique(followers[followers != 0])

    plain, targets = read(None)
    focused, _ = read(8.0)
    assert len(targets)
    assert focused[targets].sum() > plain[targets].sum() + 0.2
    assert focused[targets].sum() > 0.5
