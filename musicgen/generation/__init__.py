"""Generation: grammar-constrained sampling from a checkpoint with the model's recurrent (constant-memory) form.

    from musicgen.generation import generate
    pieces = generate("checkpoints/musicgen-small.pt", bars=16, num_samples=2, seed=1, output_dir="out")

Modules: `sampling` (temperature/top-k/top-p/repetition guard under a grammar mask, the one sampler),
`session` (the batched recurrent loop and stop rules), `prompt` (prompt MIDI -> ids, cut to bars/seconds),
`pianoroll` (PNG), `render` (WAV preview), `options` (validated settings), `api` (`generate`), `controls`
(chord chart, bpm, metre, density and key imposed at decode time), `guards` (rules of music).
"""

from .api import GeneratedPiece, generate, generate_with
from .chords import ChordChart, parse_chart, parse_chord, parse_key
from .controls import ControlConfig, Controls
from ..inference import resolve_checkpoint
from .options import GenerateOptions
from .prompt import Prompt, load_prompt, unconditional_prompt
from .sampling import SamplingConfig, filter_logits, grammar_mask, sample_next
from .session import GenerationSession, SampleResult, StopConfig, state_nbytes

__all__ = [
    "ChordChart", "ControlConfig", "Controls", "parse_chart", "parse_chord", "parse_key",
    "GenerateOptions", "GeneratedPiece", "GenerationSession", "Prompt", "SampleResult", "SamplingConfig",
    "StopConfig", "filter_logits", "generate", "generate_with", "grammar_mask", "load_prompt",
    "resolve_checkpoint", "sample_next", "state_nbytes", "unconditional_prompt",
]
