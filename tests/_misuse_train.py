"""``signticket train`` in a subprocess, interrupted at a chosen moment by a real signal.

``python tests/_misuse_train.py MOMENT -- <signticket train arguments>``; MOMENT is one of

* ``none``: run to the end;
* ``before_metrics:N`` / ``after_metrics:N``: SIGKILL just before / after epoch N's metrics
  record is written (after: the record is on disk, its checkpoint is not);
* ``mid_save:N``: SIGKILL while orbax is writing epoch N's checkpoint;
* ``in_background_save:N``: SIGKILL as ``save`` returns while epoch N's checkpoint is still
  being written in the background (``fit`` would train on meanwhile);
* ``after_save:N``: SIGKILL right after epoch N's checkpoint is committed;
* ``finishing``: SIGKILL as the run's finish goes to the background
  (``signticket.finishing``): its last checkpoint still being written, ``DONE.json`` not yet;
* ``sigint_after_metrics:N``: SIGINT (Ctrl-C) after epoch N's metrics record;
* ``slow``: sleep 1.5 s after every epoch's record (keeps the run directory locked a while).

The signal is sent by the process to itself at that exact point, so the moment is deterministic.
"""

import os
import signal
import sys
import time

from signticket import cli
from signticket.checkpoint import Checkpointer
from signticket.metrics import MetricsWriter


def _install(moment: str) -> None:
    kind, _, n = moment.partition(":")
    epoch = int(n) if n else None
    sig = signal.SIGINT if kind.startswith("sigint") else signal.SIGKILL
    if sig == signal.SIGINT:
        # A Ctrl-C from a terminal: a process started in the background (``cmd &``, nohup)
        # inherits SIGINT ignored, and Python then keeps ignoring it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    write, save, mark_done = MetricsWriter.write, Checkpointer.save, Checkpointer.mark_done

    def metrics_write(self, record):
        if kind == "before_metrics" and record.get("epoch") == epoch:
            os.kill(os.getpid(), sig)
        write(self, record)
        if kind in ("after_metrics", "sigint_after_metrics") and record.get("epoch") == epoch:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # SIGINT is delivered at the next bytecode; never go on
        if kind == "slow":
            time.sleep(1.5)

    def checkpoint_save(self, step, state, **kwargs):
        if kind == "mid_save" and step == epoch:
            import orbax.checkpoint as ocp

            self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
            os.kill(os.getpid(), sig)  # the async write is under way
        save(self, step, state, **kwargs)
        if kind == "in_background_save" and step == epoch:
            os.kill(os.getpid(), sig)  # fit goes on training while the write runs
        if kind == "after_save" and step == epoch:
            self.wait()
            os.kill(os.getpid(), sig)

    def checkpoint_mark_done(self, summary, *, wait=True):
        if kind == "finishing" and not wait:
            write_done = self._write_done

            def later(record):  # the kill always lands before DONE.json
                time.sleep(5)
                write_done(record)

            self._write_done = later
        mark_done(self, summary, wait=wait)
        if kind == "finishing" and not wait:
            os.kill(os.getpid(), sig)  # the last write under way in the background

    MetricsWriter.write = metrics_write
    Checkpointer.save = checkpoint_save
    Checkpointer.mark_done = checkpoint_mark_done


if __name__ == "__main__":
    moment, sep, *argv = sys.argv[1:]
    assert sep == "--"
    if moment != "none":
        _install(moment)
    sys.exit(cli.main(["train", *argv]))
