"""The local web studio: one page to steer the model (prompt, length, sampling, chord chart, tempo, metre,
density, key) and hear the result at once, for musicians who do not want to edit YAML.

    python -m musicgen.studio [--port 8000] [--host 127.0.0.1] [--checkpoint PATH]

Modules, one job each:
- :mod:`.app`     the Starlette routes (page, assets, job API, downloads) and the error-to-JSON mapping;
- :mod:`.jobs`    the worker pool that runs generations, their progress and their temporary folders;
- :mod:`.params`  the page's form fields -> a validated `GenerateOptions` (the library's own checks);
- :mod:`.upload`  size, format and parse checks of an uploaded prompt MIDI;
- :mod:`.audio`   WAV rendering (fluidsynth + a General MIDI soundfont where installed, else a built-in synth);
- :mod:`.roll`    a generated MIDI file -> the note list the page draws as a piano roll;
- :mod:`.edit`    "Regenerate these bars": the piece's bars as ``infill`` counts them, ranges checked up front;
- ``static/``     the page (plain HTML + vanilla JS + CSS, all served by the app: it works offline).

It calls only the public generation API (`generate_with(GenerateOptions, on_progress=...)`; an edit is
``infill="a-b"`` on a copy of the piece's MIDI file), and, to number and check bars exactly as ``infill`` does,
that option's own readers (`generation.infill.load_piece`, `plan_gaps`).
"""

from __future__ import annotations

from .app import StudioConfig, create_app

__all__ = ["StudioConfig", "create_app"]
