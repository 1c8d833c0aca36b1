"""`python -m modelshrink ...` (what `torchrun ... -m modelshrink run RECIPE` starts on each node)."""

from modelshrink.cli import app

app()
