"""``python -m lerplm`` (also what ``accelerate launch -m lerplm train ...`` runs)."""

from .cli import app

app(prog_name="lerplm")
