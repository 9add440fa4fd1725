"""Generate music from a checkpoint: `python generate.py [option=value ...]` (options: conf/generate.yaml).

    python generate.py                                    # shipped model, one new piece -> outputs/generate/...
    python generate.py output_dir=out/ bars=32 seed=1
    python generate.py prompt=song.mid prompt_bars=8 bars=64 num_samples=4 temperature=1.1 top_p=0.95 seed=7
    python generate.py checkpoint=outputs/.../best.pt tokens=20000
    python generate.py prompt=song.mid infill=9-12,25-28 num_samples=2     # regenerate bars 9-12 and 25-28
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from musicgen.config import hydra_main


@hydra_main(config_name="generate")
def main(cfg) -> None:
    from omegaconf import OmegaConf

    from musicgen.generation import GenerateOptions, generate_with

    options = GenerateOptions.from_mapping(OmegaConf.to_container(cfg, resolve=True))
    if not options.output_dir:
        now = time.localtime()
        folder = Path("outputs") / "generate" / time.strftime("%Y-%m-%d", now) / time.strftime("%H-%M-%S", now)
        options = dataclasses.replace(options, output_dir=str(folder))
    pieces = generate_with(options)
    folder = Path(options.output_dir)
    print(f"wrote {len(pieces)} piece(s) to {folder}/")
    for piece in pieces:
        files = ", ".join(p.name for p in piece.files.values())
        flag = " NO NOTES (see the warning above; marked in its .json)" if piece.warnings else ""
        print(f"  {piece.name}: {len(piece.ids)} tokens, {piece.n_notes} notes, {piece.seconds:.1f} s, "
              f"stop={piece.stop_reason}, skipped={piece.report.skipped} -> {files}{flag}")


def quote_bar_ranges(args: list[str]) -> list[str]:
    """``infill=9-12,25-28`` as a musician writes it: Hydra would read the comma as a sweep ("ambiguous value"),
    so the value is passed on quoted."""
    return [f"infill='{a.split('=', 1)[1]}'" if a.startswith("infill=") and "," in a
            and a.split("=", 1)[1][:1] not in "'\"[" else a for a in args]


if __name__ == "__main__":
    sys.argv[1:] = quote_bar_ranges(sys.argv[1:])
    main()
