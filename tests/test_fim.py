"""Fill-in-the-middle crops (musicgen/data/fim.py): a crop's whole bars rearranged as [BOS] after [BOS] before gap,
in exactly the layout infill reads; plain crops unchanged when the rate is 0."""

from __future__ import annotations

import numpy as np
import pytest

from musicgen.data import RandomCrops, prepare_corpus
from musicgen.data.fim import fim_context, fim_crop
from musicgen.generation.infill import PieceBars, gap_context, gap_tokens, plan_gaps, trained_for_infill
from musicgen.generation.bar_ranges import BarRange
from musicgen.tokenizer import REMITokenizer, TokenType, load_midi


@pytest.fixture(scope="module")
def cache(pop909_dir, tmp_path_factory):
    data = {"name": "pop909", "root": str(pop909_dir), "time_signature": "index", "split": "pop909",
            "max_files": 6, "num_workers": 1, "cache_dir": str(tmp_path_factory.mktemp("fim") / "cache")}
    return prepare_corpus(data, REMITokenizer().config, progress=False)


def _bars(ids, vocab):
    cuts = [i for i, t in enumerate(ids) if t == vocab.bar_id] + [len(ids)]
    return [tuple(ids[a:b]) for a, b in zip(cuts, cuts[1:])]


def test_a_fim_crop_is_the_crops_bars_rearranged(cache):
    vocab = cache.vocab
    plain = RandomCrops(cache, "train", 1024, seed=3)
    sig = vocab.ranges[TokenType.TIME_SIG]
    seen = 0
    for index in range(40):
        ids = plain[index].numpy()
        ids = ids[ids != vocab.pad_id]
        out = fim_crop(ids, vocab, int(plain.in_effect[np.random.default_rng((3, index)).integers(len(plain.starts))]),
                       np.random.default_rng(index))
        if out is None:
            continue
        seen += 1
        bos = np.flatnonzero(out == vocab.bos_id)
        assert bos[0] == 0 and len(bos) == 2  # [BOS] after [BOS] before gap
        after, rest = out[1:bos[1]], out[bos[1] + 1:]
        assert after[0] == vocab.bar_id and rest[0] == vocab.bar_id
        no_sig = [t for t in ids if not sig.start <= t < sig.stop and t != vocab.bos_id]
        crop_bars = _bars(no_sig, vocab)[:-1]  # whole bars only
        after_bars = _bars([t for t in after if not sig.start <= t < sig.stop], vocab)
        rest_bars = _bars(rest.tolist(), vocab)
        # before + gap is the crop's opening run of bars in order; the after bars follow the gap in the crop
        assert rest_bars == crop_bars[:len(rest_bars)]
        assert after_bars == crop_bars[len(rest_bars):len(rest_bars) + len(after_bars)]
        assert 1 <= len(after_bars) and len(rest_bars) >= 2
    assert seen >= 30


def test_infill_reads_the_layout_training_wrote(pop909_dir):
    """gap_context (what generate.py infill= feeds the model) is fim_context of the kept bars, the second BOS
    only for a checkpoint trained with fill-in-the-middle crops."""
    tok = REMITokenizer()
    path = pop909_dir / "040.mid"
    piece = PieceBars.from_midi(tok, load_midi(path), (2, 4))
    gap = plan_gaps(piece, (BarRange(21, 28),), path)[0]
    after = piece.join(tok, gap.after, {})
    before = piece.join(tok, gap.before, {}, start=piece.metres[gap.after[-1]])
    bos = tok.vocab.bos_id
    assert gap_context(tok, piece, gap, {}, separated=True) == [bos] + after + [bos] + before
    assert gap_context(tok, piece, gap, {}) == [bos] + after + before
    alone = piece.join(tok, gap.before, {})  # without bars after, the bars before state their own metre
    assert gap_context(tok, piece, gap, {}, show_after=False, separated=True) == [bos] + alone
    assert fim_context(bos, [], before, True) == [bos] + before
    assert after[1] == tok.vocab.time_signature_id(2, 4)  # the after bars state their metre, as fim_crop's do
    assert gap_tokens(tok, piece, gap)[0] == tok.vocab.bar_id
    assert trained_for_infill({"train": {"fim_rate": 0.25}})
    assert not trained_for_infill({"train": {"fim_rate": 0.0}}) and not trained_for_infill(None)


def test_fim_rate_arranges_that_share_and_zero_changes_nothing(cache):
    vocab = cache.vocab
    before = RandomCrops(cache, "train", 512, seed=7)
    zero = RandomCrops(cache, "train", 512, seed=7, fim_rate=0.0)
    half = RandomCrops(cache, "train", 512, seed=7, fim_rate=0.5)
    assert all(np.array_equal(before[i].numpy(), zero[i].numpy()) for i in range(20))
    arranged = sum(int((half[i].numpy() == vocab.bos_id).sum() == 2) for i in range(200))
    assert 60 <= arranged <= 110
