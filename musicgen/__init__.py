"""musicgen: learn to write long pieces of music from a MIDI corpus.

REMI tokens -> causal linear-attention Transformer with Stochastic Positional Encoding -> MIDI.
"""

__version__ = "0.1.0"
