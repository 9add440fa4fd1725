"""Corpus pipeline: MIDI folder -> token cache -> PyTorch datasets of crops."""

from .augment import Augmenter
from .cache import SongEntry, TokenCache
from .dataset import RandomCrops, SequentialCrops
from .options import AugmentOptions, DataOptions
from .prepare import prepare_corpus
from .sources import SourceFile, hash_split, list_sources, pop909_split

__all__ = ["AugmentOptions", "Augmenter", "DataOptions", "RandomCrops", "SequentialCrops", "SongEntry", "SourceFile", "TokenCache",
           "hash_split", "list_sources", "pop909_split", "prepare_corpus"]
