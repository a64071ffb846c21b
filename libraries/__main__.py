"""Command line: `python -m libraries COMMAND [options]`; `python -m libraries COMMAND --help`.

Each command lives in the module that owns its concept, as a pair of functions
`add_<command>_arguments(parser)` and `run_<command>(args) -> int`; only the module of the
command being run is imported, so `--help` of one command does not load the others. A user
error (`USER_ERRORS`) of any command is one `error: ...` line on stderr and exit code 1;
argparse's usage errors keep exit code 2. The project's INFO lines (what an `auto` setting chose
and the measurement behind it, a resumed checkpoint) go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

from libraries.domain import DeepSUMError
from libraries.interrupts import Terminated, sigterm_raises

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("libraries.demo", "run the whole pipeline on the embedded synthetic PROBA-V set"),
    "synth": ("libraries.synthetic", "write a synthetic PROBA-V data set folder"),
    "prepare": ("libraries.dataset.creation", "create training, validation and test sets from a PROBA-V folder"),
    "convert-tf1": ("libraries.checkpoints", "convert an authors' TF1 checkpoint into a TF2 checkpoint"),
    "fetch-weights": ("libraries.weights", "download, verify and convert the authors' checkpoints"),
    "train": ("libraries.training.deepsum", "train DeepSUM from a JSON config"),
    "pretrain-sisrnet": ("libraries.training.pretraining", "pretrain SISRNet (single-frame residual SR)"),
    "pretrain-regnet": ("libraries.training.pretraining", "pretrain RegNet on planted shifts"),
    "superresolve": ("libraries.inference.submission", "super-resolve a split into a Kelvins submission zip, or a "
                                                     "folder of frames (--frames) into one image"),
    "score": ("libraries.inference.submission", "score a submission zip against the HR images of a split"),
}


# TensorFlow's C++ INFO and WARNING lines (XLA service start, tf.data defaults, CPU features)
# tell a user nothing to act on; errors still print. As in run.sh; an explicit setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Lines TensorFlow's C++ code prints while it is imported, before its logging is set up, so that
# TF_CPP_MIN_LOG_LEVEL cannot hide them: abseil's notice that logging is not initialised, and
# the note that oneDNN is on (the project turns it on deliberately, see `libraries/__init__`).
IMPORT_NOISE = re.compile(r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                          r"|\] oneDNN custom operations are on")


@contextlib.contextmanager
def without_import_noise() -> Iterator[None]:
    """Capture what is written to the stderr file descriptor inside, and write it back without
    the `IMPORT_NOISE` lines (every other line, e.g. a real error, is kept, in order)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not IMPORT_NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


class UnreadCheckpointValues(logging.Filter):
    """Drops TensorFlow's warnings, written as it collects the objects of a restore, about each
    checkpoint value left unread: every restore of the project either checks that the checkpoint
    fits the network and says in one error line when it does not (`checkpoints.restore_weights`,
    `TrainingLoop.restore`), or leaves values unread on purpose. A refused checkpoint whose
    shapes do not fit would otherwise print tens to hundreds of such lines after its error line,
    as the process ends."""

    MESSAGES = re.compile(r"Value in checkpoint could not be found in the restored object"
                          r"|is being deleted with unrestored values|A checkpoint was restored \(e\.g\. tf\.train")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.MESSAGES.search(record.getMessage())


UNREAD_CHECKPOINT_VALUES = UnreadCheckpointValues()


# What a user can fix: the project's own errors (bad files, folders, config keys, scenes,
# checkpoints, arguments) and missing or unreadable paths. Anything else is a bug and keeps its
# traceback.
USER_ERRORS = (DeepSUMError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: python -m libraries COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`python -m libraries COMMAND --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, text = COMMANDS[command]
    with without_import_noise():  # the command's module imports TensorFlow
        module = importlib.import_module(module_name)
    snake = command.replace("-", "_")
    parser = argparse.ArgumentParser(prog=f"python -m libraries {command}", description=text)
    getattr(module, f"add_{snake}_arguments")(parser)
    args = parser.parse_args(argv[1:])
    # the project's INFO lines on stderr: what each `auto` setting chose on this machine and the
    # measurement behind it (`libraries.model.strips`, `fusion`, `kernel_gradients`), a resume
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("libraries").setLevel(logging.INFO)
    logging.getLogger("tensorflow").addFilter(UNREAD_CHECKPOINT_VALUES)  # once: the same filter object
    try:
        # SIGTERM (a scheduler's notice, `kill`) unwinds as Ctrl-C does, so that every atomic
        # writer removes its temporary files; commands that keep work (train, superresolve)
        # handle both themselves and say what they kept
        with sigterm_raises():
            return int(getattr(module, f"run_{snake}")(args) or 0)
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        how = "interrupted (Ctrl-C)" if isinstance(stop, KeyboardInterrupt) else "stopped by SIGTERM"
        print(f"error: {command} {how}; nothing half-written is left, the same command starts it again",
              file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143  # the shells' codes of the two signals


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (an OSError keeps its file name)."""
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
