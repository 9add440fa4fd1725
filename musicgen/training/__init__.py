"""Training: the loop (`trainer`), the checkpoint folder (`rundir`), schedule, optimizer groups, DDP plumbing.

Writing, reading and exporting a checkpoint file is `musicgen.inference.checkpoint`.
"""
