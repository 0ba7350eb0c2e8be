"""A test-only callback: SIGKILLs its own process after a given optimizer step, as `kill -9` would."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # runs before the checkpoint callback of this step (Lightning calls checkpoint callbacks last)
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
