"""Where the time goes: a `tf.profiler` trace of our forward pass (or training step), summed
per TensorFlow op type.

    .venv/bin/python bench/profile.py [--size 192] [--batch 1] [--train] [--frame-by-frame] [--separate-ops] [--quick]

The forward pass runs as inference does: each layer's element-wise work fused by XLA where
`xla_elementwise: auto` measures it faster (its XLA computations appear as one op type), unless
--separate-ops; the training step as `train` runs it.

Traces one run after a warm-up with `tf.profiler.experimental` (the trace folder, viewable in
TensorBoard's profile plugin, is printed), reads the XSpace protobuf it wrote, and prints the
op types by total time with their share of all op time. Writes `bench/results/profile_forward.json`
or `profile_train.json` (`profile_quick.json` with --quick).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import harness
import runners
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from libraries.config import AUTO, PRECISIONS
from libraries.model import fusion, strips

XLA_RUN = "CpuExecutable::ExecuteAsyncOnStream"  # the trace event of one run of an XLA computation on CPU


def op_times(trace_dir: Path) -> dict[str, float]:
    """Seconds per op type in the trace's XSpace: on the host plane's executor threads
    (`tf_Compute/...` lines) op events are named `NODE:TYPE` (e.g. `conv2d:_MklNativeConv2D`);
    the executor's and thread pool's own events (`ExecutorState::Process`, ...) are left out.
    An XLA computation is no TensorFlow op: its runs (`CpuExecutable::ExecuteAsyncOnStream`) are summed
    as the type `XLA`."""
    totals: dict[str, float] = collections.defaultdict(float)
    for path in trace_dir.rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace.FromString(path.read_bytes())
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if ":" in name and "::" not in name:
                        totals[name.rsplit(":", 1)[-1]] += event.duration_ps * 1e-12
                    elif name == XLA_RUN:
                        totals["XLA"] += event.duration_ps * 1e-12
    return dict(totals)


def profile(batch: int, size: int, n_features: int, train: bool, frame_by_frame: bool,
            precision: str = "float32", separate_ops: bool = False) -> dict:
    fused = not (train or separate_ops) and fusion.resolve(AUTO, precision)
    # frame by frame, each image's convolutions in strips where `frame_strips: auto` chooses them, as inference runs
    count = strips.resolve(AUTO) if frame_by_frame and not train else 1
    model = runners.make_model(n_features, frame_by_frame=frame_by_frame, precision=precision, fused=fused,
                               strips=count)
    data = runners.inputs(batch, size)
    run = runners.make_train_step("ours", model, data) if train else runners.make_forward("ours", model, data)
    run()  # trace and warm up outside the profile
    trace_dir = Path(tempfile.mkdtemp(prefix="deepsum_profile_"))
    tf.profiler.experimental.start(str(trace_dir))
    run()
    tf.profiler.experimental.stop()
    times = op_times(trace_dir)
    total = sum(times.values())
    ranked = sorted(times.items(), key=lambda item: -item[1])
    return {"batch": batch, "size": size, "n_features": n_features, "train": train, "frame_by_frame": frame_by_frame,
            "strips": count, "precision": precision, "fused": fused, "trace_dir": str(trace_dir), "op_seconds_total": total,
            "ops": [{"op": op, "seconds": seconds, "share": seconds / total if total else 0.0} for op, seconds in ranked],
            "machine": harness.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--train", action="store_true", help="a training step instead of a forward pass")
    parser.add_argument("--frame-by-frame", action="store_true", help="DeepSUM(frame_by_frame=True)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS, help="the config's precision")
    parser.add_argument("--separate-ops", action="store_true", help="forward: the element-wise work as TensorFlow's ops")
    parser.add_argument("--quick", action="store_true", help="32 px, 8 features (for tests)")
    args = parser.parse_args(argv)
    size, features = (32, 8) if args.quick else (args.size, args.features)
    result = profile(args.batch, size, features, args.train, args.frame_by_frame, args.precision, args.separate_ops)
    what = "training step" if args.train else "forward pass"
    mode = (", frame by frame" if args.frame_by_frame else "") + (f" in {result['strips']} strips" if result["strips"] > 1 else "")
    rows = [[entry["op"], entry["seconds"], f"{entry['share']:.1%}"] for entry in result["ops"][:15]]
    harness.print_table(f"{what}, batch {args.batch}, 9x{size}x{size}, {features} features, {args.precision}"
                        f"{', element-wise work fused by XLA' if result['fused'] else ''}"
                        f"{mode}: "
                        f"time per op type "
                        f"(tf.profiler; all ops {result['op_seconds_total']:.2f} s of thread time)",
                        ["op", "seconds", "share"], rows)
    print(f"\ntrace: {result['trace_dir']} (tensorboard --logdir there, Profile tab)")
    path = harness.save_result("profile_quick" if args.quick else "profile_train" if args.train else "profile_forward",
                               result)
    print(f"wrote {path}")
    return 0 if result["ops"] else 1


if __name__ == "__main__":
    sys.exit(main())
