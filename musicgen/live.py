"""``python -m musicgen.live --midi-out NAME``: play an endless stream to a MIDI output, steered from the keyboard.

The same stream as the studio's Play mode (musicgen/generation/bar_stream.py, stream.py): written bar by bar at most
``--ahead`` bars past the bar playing, its notes sent to the MIDI port named ``NAME`` (a hardware synth, or a
DAW's virtual port; any output whose name contains NAME) at their musical times, ``--latency-ms`` later.
While it plays, type a change and press Enter, e.g. ``key=G``, ``density=high``, ``chords=Am F C G``,
``temperature=1.0`` (blank value: off); it takes effect at the first bar line after the music already written,
which is printed. Ctrl-C (or ``--minutes``) stops it, with every note released; ``--save FILE.mid`` writes what
was played.

MIDI out needs mido's rtmidi backend (``pip install -e '.[live]'``: mido + python-rtmidi; not part of the
CPU install). Without it, or without such a port, the command says so in one line (``error: ...``).
``--list`` prints the outputs this machine has.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .config import UserError
from .generation.bar_stream import STEERABLE, make_generator
from .generation.stream import LiveStream

DRUM_CHANNEL = 9


def midi_outputs() -> list[str]:
    """The MIDI outputs this machine offers (UserError, one line, without the rtmidi backend)."""
    try:
        import mido

        return list(mido.get_output_names())
    except ImportError as exc:
        raise UserError(f"live MIDI out needs mido's rtmidi backend ({getattr(exc, 'name', None) or exc} is "
                        "missing): pip install -e '.[live]'") from None
    except Exception as exc:  # noqa: BLE001 - rtmidi without a MIDI system (no ALSA sequencer, no CoreMIDI)
        raise UserError(f"no MIDI system on this machine ({type(exc).__name__}: {exc})") from None


def open_output(name: str) -> Any:
    """The output whose name is or contains ``name`` (UserError, one line, when there is none)."""
    outputs = midi_outputs()
    match = [o for o in outputs if o == name] or [o for o in outputs if name.lower() in o.lower()]
    if not match:
        have = ", ".join(repr(o) for o in outputs) if outputs else "none"
        raise UserError(f"no MIDI output named {name!r} on this machine (outputs: {have}; --list shows them)")
    import mido

    return mido.open_output(match[0])


def parse_change(line: str) -> dict[str, str]:
    """``key=G`` (or several, separated by ``;``) -> a change for LiveStream.steer."""
    change = {}
    for part in line.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in STEERABLE:
            raise UserError(f"{part.strip()!r}: type NAME=VALUE with NAME one of {', '.join(STEERABLE)}")
        change[name] = value.strip()
    return change


def play(stream: LiveStream, send: Callable[[list[int]], None], latency: float = 0.0, bars: int | None = None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         stopped: threading.Event | None = None, preroll: float = 0.3) -> int:
    """Send the stream's notes as MIDI bytes (``send([status, pitch, velocity])``) at their times, reporting
    each bar as it plays; until ``bars`` bars have played, ``stopped`` is set or the stream ends. Returns the
    bars played in full. Every sounding note is released at the end."""
    stopped = stopped or threading.Event()
    events: list[tuple[float, int, list[int]]] = []  # (time, order, message): offs before ons at one time
    starts: list[tuple[float, int]] = []  # (wall time, index) of each bar received
    sounding: dict[tuple[int, int], int] = {}
    t0, next_bar, order, last = None, 0, 0, 0
    try:
        while not stopped.is_set():
            for bar in stream.bars_from(next_bar, timeout=0.0 if events else 0.2):
                if t0 is None:
                    t0 = clock() + preroll - bar.start
                starts.append((t0 + bar.start, bar.index))
                del starts[:-16]
                next_bar = bar.index + 1
                for onset, seconds, pitch, velocity, program in bar.notes:
                    channel = DRUM_CHANNEL if program == 128 else 0
                    at = t0 + onset + latency
                    heapq.heappush(events, (at + max(seconds, 0.02), order, [0x80 | channel, pitch, 0]))
                    heapq.heappush(events, (at, order + 1, [0x90 | channel, pitch, max(1, velocity)]))
                    order += 2
            now = clock()
            playing = [index for start, index in starts if start <= now]
            if playing:
                last = playing[-1]
                stream.played(last)
                if bars is not None and last >= bars:
                    return bars
            while events and events[0][0] <= now:
                _, _, message = heapq.heappop(events)
                key = (message[0] & 0x0F, message[1])
                if message[0] & 0xF0 == 0x90:
                    sounding[key] = sounding.get(key, 0) + 1
                    send(message)
                elif sounding.get(key):
                    sounding[key] -= 1
                    send(message)
            if not stream.alive and not events and next_bar >= stream.bars_written:
                break
            sleep(min(0.01, max(0.0, events[0][0] - now)) if events else 0.01)
        return last
    finally:
        for (channel, pitch), count in sounding.items():
            if count:
                send([0x80 | channel, pitch, 0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m musicgen.live", description=__doc__.splitlines()[0])
    p.add_argument("--midi-out", metavar="NAME", help="the MIDI output to play to (its name, or part of it)")
    p.add_argument("--list", action="store_true", help="list this machine's MIDI outputs and exit")
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=None)
    for name in STEERABLE:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"the stream's {name} at start")
    p.add_argument("--prompt", default=None, help="a MIDI file the stream continues")
    p.add_argument("--prompt-bars", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every note's time (ms)")
    p.add_argument("--ahead", type=int, default=2, help="bars written past the bar playing (default 2)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--save", default=None, help="write what was played to this MIDI file at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            outputs = midi_outputs()
            print("\n".join(outputs) if outputs else "this machine has no MIDI output")
            return 0
        if not args.midi_out:
            raise UserError("name the MIDI output: --midi-out NAME (--list shows them)")
        port = open_output(args.midi_out)
        from .generation.options import GenerateOptions

        values: dict[str, Any] = {"checkpoint": args.checkpoint, "device": args.device, "seed": args.seed,
                                  "allow_eos": False, "progress": False,
                                  **{k: getattr(args, k) for k in STEERABLE if getattr(args, k) is not None}}
        if args.prompt:
            values.update(prompt=args.prompt, prompt_bars=args.prompt_bars)
        options = GenerateOptions.from_mapping(values)
        generator = make_generator(options)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import mido

    stream = LiveStream(lambda: generator, ahead_bars=args.ahead, name="live")
    stopped = threading.Event()

    def keyboard() -> None:
        for line in sys.stdin:
            try:
                record = stream.steer(parse_change(line))
                print(f"from bar {record['from_bar'] + 1} ({record['latency_bars']} bars after the bar playing)",
                      flush=True)
            except UserError as exc:
                print(f"error: {exc}", flush=True)
        # stdin closed: play on

    threading.Thread(target=keyboard, name="keyboard", daemon=True).start()
    if args.minutes:
        threading.Timer(args.minutes * 60, stopped.set).start()
    print(f"playing to {port.name} (seed {options.resolved_seed() if args.seed is None else args.seed}); type e.g. "
          "key=G and Enter to steer, Ctrl-C to stop", flush=True)
    played = 0
    try:
        played = play(stream, lambda message: port.send(mido.Message.from_bytes(message)), args.latency_ms / 1000,
                      stopped=stopped)
    except KeyboardInterrupt:
        played = int(stream.played_bars)
    finally:
        stopped.set()
        stream.stop()
        port.close()
    if args.save:
        Path(args.save).write_bytes(stream.midi_bytes(played))
        print(f"wrote {args.save} ({played} bars)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
