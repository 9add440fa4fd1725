"""Pin what generate writes, to check that a refactoring changed nothing a user gets.

    python -m benchmarks.pin_generate --write pins.json      # before the change
    python -m benchmarks.pin_generate --check pins.json      # after it, on the same machine

For five settings (no prompt; a POP909 prompt; a prompt with a chord chart, density and key; a repetition
penalty with top-k, temperature and chord_tones=prefer; a sparse prompt with the tonal memory at 1) it hashes
the token ids and the .json reports (guards, controls, tonal memory, stop reason) of `generate` with the
shipped model and a fixed seed. Same machine, same hashes: sampling is exact given the logits, and float
rounding may differ between CPUs, so pins are compared on one machine, not stored in the tests.
Measured for the decode-rule interface (generation/rules.py): all five identical to the code before it, but
the guards' `probability_removed` under a repetition penalty, now taken on the penalised distribution.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


from benchmarks.common import shared_data
from musicgen.generation import generate


def cases() -> dict[str, dict]:
    song = str(shared_data() / "pop909" / "020.mid")
    return {
        "free": dict(bars=8, seed=1),
        "prompt": dict(prompt=song, prompt_bars=4, bars=6, num_samples=2, seed=3),
        "controls": dict(prompt=song, prompt_bars=4, bars=6, num_samples=2, seed=5, chords="Am F | C G",
                         density="high", key="C"),
        "penalty": dict(bars=6, seed=7, repetition_penalty=1.3, top_k=20, temperature=1.1, chord_tones="prefer",
                        chords="C G"),
        "sparse": dict(prompt=song, prompt_bars=2, bars=12, seed=11, density="low", tonal_memory=1.0),
    }


def pins(checkpoint: str) -> dict[str, str]:
    out = {}
    for name, options in cases().items():
        pieces = generate(checkpoint, log=None, progress=False, **options)
        blob = json.dumps([[p.ids, p.guards, p.controls, p.tonal_memory, p.stop_reason] for p in pieces],
                          sort_keys=True, default=str)
        out[name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
        print(f"{name:10s} {out[name]}  tokens {[len(p.ids) for p in pieces]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="JSON")
    group.add_argument("--check", metavar="JSON")
    args = parser.parse_args()
    now = pins(args.checkpoint)
    if args.write:
        Path(args.write).write_text(json.dumps(now, indent=1) + "\n")
        print(f"wrote {args.write}")
        return
    before = json.loads(Path(args.check).read_text())
    changed = sorted(k for k in before if before[k] != now.get(k))
    print("identical" if not changed else f"changed: {', '.join(changed)}")
    sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
