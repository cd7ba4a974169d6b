"""The trainer's progress bar: steps done, ETA and the live train and validation losses."""

from __future__ import annotations

import time
from typing import Optional

from torch import Tensor


class TrainingProgress:
    """A rich progress bar (ETA, live losses) redrawn about 10 times a second; nothing when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar, self.next_draw, self.step, self.loss, self.val_loss = None, 0.0, done, None, None
        if enabled:
            from rich import progress as rp  # imported only when drawn: rich is slow to import

            self.bar = rp.Progress(rp.TextColumn("train"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                   rp.TextColumn("{task.fields[losses]}"), rp.TimeElapsedColumn(),
                                   rp.TextColumn("eta"), rp.TimeRemainingColumn(), refresh_per_second=10)
            self.task = self.bar.add_task("train", total=total, completed=done, losses="")
            self.bar.start()

    def update(self, step: int, loss: Optional[Tensor], force: bool = False) -> None:
        # .item() and rich's bookkeeping cost microseconds: pay them ~10 times a second, not every step
        self.step, self.loss = step, self.loss if loss is None else loss
        if self.bar is None or (not force and time.monotonic() < self.next_draw):
            return
        self.next_draw = time.monotonic() + 0.1
        text = f"loss {self.loss.item():.4f}" if self.loss is not None else ""
        text += f"  val {self.val_loss:.4f}" if self.val_loss is not None else ""
        self.bar.update(self.task, completed=step, losses=text)

    def close(self) -> None:
        if self.bar is not None:
            self.update(self.step, None, force=True)
            self.bar.stop()
