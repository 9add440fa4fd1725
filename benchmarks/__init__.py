"""Speed, memory and music measurements, each a module run as ``python -m benchmarks.<name>`` from the project
root: it prints a table and writes JSON under benchmarks/results/. Code they share (corpora, continuations,
free generation) lives in `benchmarks.common` and in the package (`musicgen.evaluation`), not in copies."""
