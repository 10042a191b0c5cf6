"""`python -m recsys.cli`: what torchrun's ranks (trainer/distributed.py) and subprocess tests run."""

from recsys.cli import main

main(prog_name="recsys")
