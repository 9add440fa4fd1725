"""Play forever, measured: an hour of one live stream, and four streams at once (docs/stream.md).

    python -m benchmarks.stream [--checkpoint checkpoints/musicgen-small.pt] [--minutes 60] [--seed 5]
                                [--concurrent 4] [--concurrent-seconds 90] [--name stream]

1. **Soak**: one :class:`~musicgen.generation.stream.LiveStream` (the studio's own class: a thread at most
   ``ahead_bars`` past its player) streams ``--minutes`` of music. With ``--pace real`` the consumer plays in wall
   time as the page does (an hour of music takes an hour; the lead of written over played music is the slack).
   By default it plays *simulated* time: it takes
   each bar the moment it is written and reports it as playing (the music's own clock, never a sleep), so an
   hour of music takes minutes, and the generator runs as fast as the buffer lets it, the hardest case for
   memory and speed. A real-time player that began when the first bar arrived needs bar k by wall time
   ``first + start_k``; the smallest margin over all bars (``slack``) says whether it would ever have starved.
   Every ``--sample-minutes`` of music: RSS (VmRSS), tokens/s over that stretch. Every 10 minutes of music the
   stream is steered (key, temperature) through ``LiveStream.steer``; the latency in bars is recorded. At the
   end, every 16-bar window of the whole hour (decoded by the tokenizer, as Save does) against POP909's range
   (musicgen/evaluation/bar_windows.py, as benchmarks/long_pieces.py), and the guards' actions.
2. **Concurrent**: ``--concurrent`` streams at once, each in its own process (as the studio runs them), played in
   real time for ``--concurrent-seconds`` (a player that starts each stream 0.3 s after its first bar and reports
   its position as the page does): the smallest lead of written over played music (> 0: never starved), the first
   bar's delay from the press (model load included). Then the same streams consumed flat out for
   ``--capacity-seconds``: what they write per wall second when none waits (the CPU's capacity, shared), in
   processes and, for comparison, on threads of one process.

Prints tables and writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any


from benchmarks.common import print_table, write_results
from musicgen.evaluation.bar_windows import bar_window_statistics, within_range
from musicgen.generation.guards import MusicGuards
from musicgen.generation.options import GenerateOptions
from musicgen.generation.bar_stream import make_generator
from musicgen.generation.stream import LiveStream
from musicgen.generation.stream_process import ProcessStream, start_fork_server

#: steering during the soak, one change every 10 minutes of music
STEERS = [{"key": "G"}, {"temperature": "0.95"}, {"key": "C"}, {"key": "F", "temperature": "0.9"},
          {"key": ""}]


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start_stream(checkpoint: str, seed: int, ahead: int, processes: bool = False) -> tuple[Any, float]:
    """A stream as the studio starts one: in its own process (``processes``) or on a thread of this one."""
    options = GenerateOptions.from_mapping({"checkpoint": checkpoint, "device": "cpu", "seed": seed,
                                            "allow_eos": False, "progress": False})
    began = time.perf_counter()
    if processes:
        return ProcessStream(make_generator, (options,), ahead_bars=ahead, name=f"bench-{seed}"), began
    return LiveStream(lambda: make_generator(options), ahead_bars=ahead, name=f"bench-{seed}"), began


class Consumer:
    """Reads a stream's bars as they come and reports each as playing (simulated playback time)."""

    def __init__(self, stream: LiveStream, began: float) -> None:
        self.stream, self.began = stream, began
        self.next = 0
        self.music = 0.0  # seconds of music received
        self.ready: list[tuple[float, float]] = []  # (wall time received, music start) of each bar
        self.first_bar_s: float | None = None

    def poll(self, timeout: float) -> int:
        bars = self.stream.bars_from(self.next, timeout)
        now = time.perf_counter()
        for bar in bars:
            if self.first_bar_s is None:
                self.first_bar_s = now - self.began
            self.ready.append((now, bar.start))
            self.music = bar.start + bar.seconds
            self.next = bar.index + 1
            self.stream.played(bar.index)
        return len(bars)

    def slack(self) -> float:
        """Smallest margin (s) of a real-time player that began with the first bar: >= 0 never starves."""
        if len(self.ready) < 2:
            return float("nan")
        first = self.ready[0][0]
        return float(min(first + start - ready for ready, start in self.ready[1:]))


def soak(checkpoint: str, minutes: float, seed: int, ahead: int, sample_minutes: float,
         pace: str = "simulated") -> dict[str, Any]:
    """``pace``: ``simulated`` (each bar taken as soon as it is written) or ``real`` (a player in wall time, as
    the page plays: an hour of music takes an hour, and the stream waits for it)."""
    stream, began = start_stream(checkpoint, seed, ahead)
    real = pace == "real"
    consumer = PacedConsumer(stream, began) if real else Consumer(stream, began)
    samples, steers = [], []
    next_sample, next_steer, steer_i = sample_minutes * 60, 600.0, 0
    last_tokens, last_elapsed = 0, 0.0
    wall0 = time.perf_counter()
    try:
        while (consumer.played_s if real else consumer.music) < minutes * 60:
            if real:
                consumer.tick()
                time.sleep(0.05)
                if not stream.alive:
                    raise RuntimeError(f"the stream ended: {stream.error}")
                if stream.generator is None:
                    continue
            elif not consumer.poll(30.0) and not stream.alive:
                raise RuntimeError(f"the stream ended: {stream.error}")
            gen = stream.generator
            if consumer.music >= next_sample:
                tokens, elapsed = len(gen.tokens), gen.elapsed
                samples.append({"music_min": round(consumer.music / 60, 2), "bars": consumer.next,
                                "tokens": tokens, "wall_s": round(time.perf_counter() - wall0, 1),
                                "rss_mb": round(rss_mb(), 1),
                                "tokens_per_s": round((tokens - last_tokens) / max(elapsed - last_elapsed, 1e-9), 1)})
                last_tokens, last_elapsed = tokens, elapsed
                next_sample += sample_minutes * 60
            if consumer.music >= next_steer and steer_i < len(STEERS):
                record = stream.steer(STEERS[steer_i])
                steers.append({"music_min": round(consumer.music / 60, 2), **record})
                steer_i += 1
                next_steer += 600.0
        wall = time.perf_counter() - wall0
        stream.stop()
        gen = stream.generator
        guards = gen.session.rule(MusicGuards)
        midi = gen.midi(consumer.next)
    finally:
        stream.stop()
    windows = bar_window_statistics(midi)
    warm = [s for s in samples if s["music_min"] > 5.0] or samples
    rss = [s["rss_mb"] for s in warm]
    rates = [s["tokens_per_s"] for s in warm]
    slack = consumer.lead if real else consumer.slack()  # real: the smallest lead of written over played music
    return {"pace": pace, "music_minutes": round(consumer.music / 60, 2), "bars": consumer.next,
            "tokens": len(gen.tokens), "wall_s": round(wall, 1), "speed_x_real_time": round(consumer.music / wall, 2),
            "generation_x_real_time": round(consumer.music / max(gen.elapsed, 1e-9), 2),
            "first_bar_s": round(consumer.first_bar_s or float("nan"), 3), "slack_s": round(slack, 2),
            "rss_max_over_min_after_warmup": round(max(rss) / min(rss), 4),
            "tokens_per_s_min_max_after_warmup": [min(rates), max(rates)],
            "tokens_per_s_max_over_min": round(max(rates) / min(rates), 3),
            "samples": samples, "steers": steers,
            "guards": guards.report(0) if guards is not None else None,
            "windows": len(windows), "range_check": within_range(windows),
            "window_stats": [w.to_dict() for w in windows]}


class PacedConsumer(Consumer):
    """Plays in real (wall) time: the first bar ``PREROLL`` s after it arrives, then each bar at its start."""

    def __init__(self, stream: LiveStream, began: float) -> None:
        super().__init__(stream, began)
        self.t0: float | None = None
        self.starts: list[tuple[float, float, int]] = []  # (start, length, index) of the bars received
        self.lead = float("inf")  # smallest (music written - music played), seconds
        self.lead_at = 0.0  # where it was (seconds played)
        self.played_s = 0.0

    def tick(self) -> None:
        bars = self.stream.bars_from(self.next)
        now = time.perf_counter()
        for bar in bars:
            if self.first_bar_s is None:
                self.first_bar_s = now - self.began
                self.t0 = now + PREROLL - bar.start
            self.starts.append((bar.start, bar.seconds, bar.index))
            self.music, self.next = bar.start + bar.seconds, bar.index + 1
        if self.t0 is None:
            return
        self.played_s = max(0.0, now - self.t0)
        if self.music - self.played_s < self.lead:
            self.lead, self.lead_at = self.music - self.played_s, self.played_s
        for start, seconds, index in reversed(self.starts[-8:]):
            if start <= self.played_s:
                self.stream.played(index + min(1.0, (self.played_s - start) / max(seconds, 1e-3)))
                break


PREROLL = 0.3


def concurrent(checkpoint: str, count: int, seconds: float, ahead: int, paced: bool,
               processes: bool = True) -> list[dict[str, Any]]:
    """``count`` streams at once, each played in real time (``paced``) or consumed flat out (capacity), in
    processes (as the studio runs them) or on threads."""
    kind = PacedConsumer if paced else Consumer
    if processes:
        start_fork_server([make_generator.__module__])  # the studio starts it at launch: not part of a Play
    consumers = [kind(*start_stream(checkpoint, 100 + i, ahead, processes)) for i in range(count)]
    wall0 = time.perf_counter()
    try:
        while time.perf_counter() - wall0 < seconds:
            for consumer in consumers:
                if paced:
                    consumer.tick()
                else:
                    consumer.poll(0.02)
                if consumer.stream.status == "error":
                    raise RuntimeError(f"a stream ended: {consumer.stream.error}")
            if paced:
                time.sleep(0.02)
        wall = time.perf_counter() - wall0
    finally:
        for consumer in consumers:
            consumer.stream.stop()
    rows = []
    for i, c in enumerate(consumers):
        row = {"seed": 100 + i, "music_written_s": round(c.music, 1), "wall_s": round(wall, 1),
               "written_x_real_time": round(c.music / wall, 2), "first_bar_s": round(c.first_bar_s or float("nan"), 3),
               "bars": c.next,
               "tokens_per_s": c.stream.snapshot().get("tokens_per_second", 0.0), "processes": processes}
        if paced:
            row.update(played_s=round(c.played_s, 1), min_lead_s=round(c.lead, 2), min_lead_at_s=round(c.lead_at, 1),
                       starved=c.lead < 0)
        rows.append(row)
    return rows


def soak_part(result: dict[str, Any], args: argparse.Namespace) -> None:
    s = result["soak"] = soak(args.checkpoint, args.minutes, args.seed, args.ahead, args.sample_minutes, args.pace)
    write_results(args.name, result, quiet=True)
    print_table(["music (min)", "bars", "RSS (MB)", "tokens/s"],
                [[x["music_min"], x["bars"], x["rss_mb"], x["tokens_per_s"]] for x in s["samples"]])
    check = s["range_check"]
    print_table(["music", "wall", "x real time", "first bar (s)", "slack (s)", "RSS max/min", "tok/s max/min",
                 "16-bar windows", "all in POP909's range", "guard actions", "steer latency (bars)"],
                [[f"{s['music_minutes']} min", f"{s['wall_s']} s", s["speed_x_real_time"], s["first_bar_s"],
                  s["slack_s"], s["rss_max_over_min_after_warmup"], s["tokens_per_s_max_over_min"], s["windows"],
                  "yes" if check.get("all_inside") else "no",
                  sum((s["guards"] or {}).get("acted", {}).values()),
                  ", ".join(str(x["latency_bars"]) for x in s["steers"])]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--minutes", type=float, default=60.0, help="music the soak streams (0: no soak)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--ahead", type=int, default=2, help="bars written past the bar playing")
    p.add_argument("--sample-minutes", type=float, default=2.5, help="music between two RSS/speed samples")
    p.add_argument("--pace", choices=("simulated", "real"), default="simulated",
                   help="the soak's player: each bar as soon as it is written, or in wall time as the page plays")
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--concurrent-seconds", type=float, default=120.0, help="wall time the streams play in real time")
    p.add_argument("--capacity-seconds", type=float, default=30.0,
                   help="wall time the same streams are then consumed flat out (their throughput)")
    p.add_argument("--name", default="stream")
    args = p.parse_args()
    result: dict[str, Any] = {"checkpoint": args.checkpoint, "ahead_bars": args.ahead, "cpus": os.cpu_count(),
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                              # other work on the machine slows every number here: recorded beside them
                              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    if args.minutes > 0:
        soak_part(result, args)
    if args.concurrent:
        rows = result["concurrent"] = concurrent(args.checkpoint, args.concurrent, args.concurrent_seconds,
                                                 args.ahead, paced=True)
        write_results(args.name, result, quiet=True)
        print_table(["stream", "played in real time (s)", "written (s)", "min lead (s)", "starved", "first bar (s)",
                     "tokens/s"],
                    [[r["seed"], r["played_s"], r["music_written_s"], r["min_lead_s"], r["starved"], r["first_bar_s"],
                      r["tokens_per_s"]] for r in rows])
        result["concurrent_all_ahead"] = not any(r["starved"] for r in rows)
        if args.capacity_seconds:
            for processes in (True, False):
                rows = result["capacity_processes" if processes else "capacity_threads"] = concurrent(
                    args.checkpoint, args.concurrent, args.capacity_seconds, args.ahead, paced=False,
                    processes=processes)
                print_table([f"flat out ({'processes' if processes else 'threads'})", "music written (s)", "wall (s)",
                             "x real time", "tokens/s"],
                            [[r["seed"], r["music_written_s"], r["wall_s"], r["written_x_real_time"],
                              r["tokens_per_s"]] for r in rows])
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_results(args.name, result)


if __name__ == "__main__":
    main()
