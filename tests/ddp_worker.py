"""Run by torchrun in test_distributed.py: the unchanged CLI `train` command, with each rank recording
which training blocks it saw (a hash of each block's token ids) in $LERPLM_SEEN_DIR/rank<R>.json."""

import hashlib
import json
import os
import sys
from pathlib import Path

from transformers import Trainer

from lerplm.cli import app

seen: list[str] = []
_step = Trainer.training_step


def training_step(self, model, inputs, *args, **kwargs):
    for row in inputs["input_ids"].tolist():
        seen.append(hashlib.sha1(json.dumps(row).encode()).hexdigest())
    return _step(self, model, inputs, *args, **kwargs)


Trainer.training_step = training_step
try:
    app(sys.argv[1:], prog_name="lerplm", standalone_mode=False)
finally:
    out = Path(os.environ["LERPLM_SEEN_DIR"]) / f"rank{os.environ.get('RANK', '0')}.json"
    out.write_text(json.dumps(seen))
