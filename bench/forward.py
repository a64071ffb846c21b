"""Forward-pass benchmark: ours (`libraries.model`) against the naive baseline (the authors'
formulation, `naive_deepsum.py`) on a whole scene (batch 1, 9x384x384) and on a training
batch (8x9x96x96), ours also frame by frame (`DeepSUM(frame_by_frame=True)`, config
`frame_by_frame` in inference: less memory; each image's convolutions in strips where
`frame_strips: auto` measures it faster, printed with its measurement) and in `mixed_bfloat16`, with the machine's
3x3-convolution ceiling measured in the same process, peak memory of a fresh process per
configuration, and whole-test-set throughput. Ours runs as inference does: each layer's
element-wise work fused by XLA where `xla_elementwise: auto` measures it faster (printed with
its measurement; beside each, a row with the other choice: ", separate ops" or ", fused by XLA").

    .venv/bin/python bench/forward.py [--repeats 3] [--quick]

Prints tables and writes `bench/results/forward.json` (`forward_quick.json` with --quick:
tiny sizes and 8 features, for the test suite). Timings are medians over interleaved
repeats after a warm-up; compare them only within one run (as ratios): the machine is shared.
"""

from __future__ import annotations

import sys

import conv_ceiling
import harness
import runners
import tensorflow as tf

from libraries.config import compute_dtype_name
from libraries.model import fusion, strips

TEST_SCENES = 290  # PROBA-V test set: 146 NIR + 144 RED scenes
FULL = {"features": 64, "configs": {"scene": (1, 384), "training batch": (8, 96)}, "ceiling_size": 192}
# one config, and fresh-process peaks of ours and naive only: few processes in the test suite
QUICK = {"features": 8, "configs": {"scene": (1, 32)}, "ceiling_size": 32, "frame_by_frame": False,
         "bfloat16_memory": False, "other_choice": False, "probe_shape": (1, 32, 32, 8)}


def test_set_throughput(model, size: int, repeats: int, naive_forward_s: float) -> dict:
    """Scenes per hour for sliding-window inference with n_slide = 0 and 2 (1 and 3 windows of
    T frames): ours computes SISRNet once per frame of the scene (T + n_slide frames) and the
    rest once per window; the naive graph runs whole forward passes per window."""
    T = model.config.T_in
    data = runners.inputs(1, size)
    features_fn = tf.function(model.sisrnet_features, autograph=False)
    features = features_fn(data["x"])
    rest_fn = tf.function(lambda f, x, m: model.forward_from_features(f, x, m)["sr"], autograph=False)
    timing = harness.interleaved_medians({"sisrnet": lambda: features_fn(data["x"]).numpy(),
                                          "rest": lambda: rest_fn(features, data["x"], data["masks"]).numpy()},
                                         repeats, progress=False)
    per_frame = timing["sisrnet"]["median_s"] / T
    result = {"sisrnet_per_frame_s": per_frame, "rest_per_window_s": timing["rest"]["median_s"]}
    for n_slide in (0, 2):
        ours = per_frame * (T + n_slide) + timing["rest"]["median_s"] * (n_slide + 1)
        naive = naive_forward_s * (n_slide + 1)
        result[f"n_slide={n_slide}"] = {"ours_s_per_scene": ours, "ours_scenes_per_hour": 3600 / ours,
                                        "naive_scenes_per_hour": 3600 / naive,
                                        "ours_test_set_hours": TEST_SCENES * ours / 3600,
                                        "naive_test_set_hours": TEST_SCENES * naive / 3600}
    return result


FRAME_BY_FRAME = "ours, frame by frame"  # DeepSUM(frame_by_frame=True), in strips as frame_strips: auto chooses
BFLOAT16 = "ours, mixed_bfloat16"  # config precision: mixed_bfloat16 (oneDNN's AMX kernels where the CPU has them)
# the suffix of the row that runs the choice `auto` did not make, by whether it chose XLA
OTHER_CHOICE = {True: ", separate ops", False: ", fused by XLA"}


def elementwise_choice(shape: tuple[int, int, int, int] = fusion.PROBE_SHAPE) -> dict:
    """What `xla_elementwise: auto` chooses here per precision, with the measurement behind it."""
    choice = {}
    for precision in ("float32", "mixed_bfloat16"):
        timings = fusion.measure(shape, tf.as_dtype(compute_dtype_name(precision)))
        choice[precision] = {**timings, "xla": fusion.xla_wins(timings)}
    return choice


def strips_choice() -> dict:
    """What `frame_strips: auto` chooses here, with the measurement behind it."""
    count = strips.threads()
    timings = strips.measure(count) if count > 1 else {"whole_s": 0.0, "strips_s": 0.0}
    return {**timings, "threads": count, "strips": count if count > 1 and strips.strips_win(timings) else 1}


def measure(setup: dict, repeats: int) -> dict:
    choice = elementwise_choice(setup.get("probe_shape", fusion.PROBE_SHAPE))
    fused = {precision: value["xla"] for precision, value in choice.items()}
    strip = strips_choice() if setup.get("frame_by_frame", True) else {"strips": 1}
    model = runners.make_model(setup["features"], fused=fused["float32"])
    frame_model = runners.make_model(setup["features"], frame_by_frame=True, fused=fused["float32"],
                                     strips=strip["strips"])  # same weights
    bfloat16_model = runners.make_model(setup["features"], precision="mixed_bfloat16", fused=fused["mixed_bfloat16"])
    other = {}  # the other choice, for the same-run ratio of fusing
    if setup.get("other_choice", True):
        other = {"ours" + OTHER_CHOICE[fused["float32"]]: runners.make_model(setup["features"],
                                                                               fused=not fused["float32"]),
                 BFLOAT16 + OTHER_CHOICE[fused["mixed_bfloat16"]]: runners.make_model(
                     setup["features"], precision="mixed_bfloat16", fused=not fused["mixed_bfloat16"])}
    results = {"n_features": setup["features"], "configs": {}, "elementwise": choice, "frame_strips": strip}
    for name, (batch, size) in setup["configs"].items():
        data = runners.inputs(batch, size)
        runs = {impl: runners.make_forward(impl, model, data) for impl in runners.IMPLEMENTATIONS}
        if setup.get("frame_by_frame", True):
            runs[FRAME_BY_FRAME] = runners.make_forward("ours", frame_model, data)
        runs[BFLOAT16] = runners.make_forward("ours", bfloat16_model, data)
        runs.update({row: runners.make_forward("ours", variant, data) for row, variant in other.items()})
        print(f"{name}: batch {batch}, 9x{size}x{size}", file=sys.stderr, flush=True)
        timing = harness.interleaved_medians(runs, repeats)
        flops = harness.deepsum_flops(batch, size, size, setup["features"])["total"]
        child = {"mode": "forward", "batch": batch, "size": size, "n_features": setup["features"]}
        memory = {impl: harness.run_child(__file__, {**child, "impl": impl, "fused": fused["float32"] and impl == "ours"})
                  for impl in runners.IMPLEMENTATIONS}
        if setup.get("frame_by_frame", True):
            memory[FRAME_BY_FRAME] = harness.run_child(__file__, {**child, "impl": "ours", "frame_by_frame": True,
                                                                  "fused": fused["float32"],
                                                                  "strips": strip["strips"]})
        if setup.get("bfloat16_memory", True):
            memory[BFLOAT16] = harness.run_child(__file__, {**child, "impl": "ours", "fused": fused["mixed_bfloat16"],
                                                            "config": {"precision": "mixed_bfloat16"}})
        results["configs"][name] = {"batch": batch, "size": size, "flops": flops, "timing": timing, "memory": memory}
    results["ceiling"] = conv_ceiling.measure_ceiling(size=setup["ceiling_size"])
    scene_batch, scene_size = setup["configs"]["scene"]
    naive_scene_s = results["configs"]["scene"]["timing"]["naive"]["median_s"]
    results["test_set"] = test_set_throughput(model, scene_size, repeats, naive_scene_s)
    results["test_set_bfloat16"] = test_set_throughput(bfloat16_model, scene_size, repeats, naive_scene_s)
    results["machine"] = harness.machine()
    return results


def report(results: dict) -> None:
    harness.print_table("xla_elementwise auto: one layer's element-wise work on a frame's convolution output, "
                        "as separate ops or fused by XLA",
                        ["precision", "separate ops s", "XLA s", "chosen"],
                        [[precision, c["separate_s"], c["xla_s"], "XLA" if c["xla"] else "separate ops"]
                         for precision, c in results["elementwise"].items()])
    strip = results["frame_strips"]
    if "threads" in strip:
        print(f"\nframe_strips auto: one 3x3 layer of a 384x384 image on {strip['threads']} thread(s), whole "
              f"{strip['whole_s']:.4f} s, in {strip['threads']} strips {strip['strips_s']:.4f} s -> "
              f"{strip['strips']} strip(s) per image, frame by frame")
    ceiling = results["ceiling"]["gflops"]
    rows = []
    for name, config in results["configs"].items():
        for impl in config["timing"]:
            seconds = config["timing"][impl]["median_s"]
            memory = config["memory"].get(impl)  # None: not measured (--quick)
            gflops = config["flops"] / seconds / 1e9
            rows.append([name, impl, seconds, gflops, f"{gflops / ceiling:.0%}",
                         "-" if memory is None else f"{memory['peak_rss_bytes'] / harness.GIB:.2f}",
                         "-" if memory is None else
                         f"{(memory['peak_rss_bytes'] - memory['base_rss_bytes']) / harness.GIB:.2f}"])
        timing, memory = config["timing"], config["memory"]
        config["speedup"] = timing["naive"]["median_s"] / timing["ours"]["median_s"]
        config["memory_ratio"] = memory["ours"]["peak_rss_bytes"] / memory["naive"]["peak_rss_bytes"]
        config["ceiling_fraction"] = config["flops"] / timing["ours"]["median_s"] / 1e9 / ceiling
        config["bfloat16_speedup"] = timing["ours"]["median_s"] / timing[BFLOAT16]["median_s"]
        for row, precision in (("ours", "float32"), (BFLOAT16, "mixed_bfloat16")):
            xla = results["elementwise"][precision]["xla"]
            if row + OTHER_CHOICE[xla] in timing:
                chosen, other_s = timing[row]["median_s"], timing[row + OTHER_CHOICE[xla]]["median_s"]
                config[f"{row} fused / separate speed-up"] = other_s / chosen if xla else chosen / other_s
        if BFLOAT16 in memory:
            config["bfloat16_memory_ratio"] = memory[BFLOAT16]["peak_rss_bytes"] / memory["naive"]["peak_rss_bytes"]
        if FRAME_BY_FRAME in timing:
            config["frame_by_frame_speedup"] = timing["naive"]["median_s"] / timing[FRAME_BY_FRAME]["median_s"]
            config["frame_by_frame_memory_ratio"] = (memory[FRAME_BY_FRAME]["peak_rss_bytes"]
                                                     / memory["naive"]["peak_rss_bytes"])
    harness.print_table(f"forward pass ({results['n_features']} features; conv ceiling {ceiling:.1f} GFLOP/s)",
                        ["config", "impl", "median s", "GFLOP/s", "of ceiling", "peak GiB", "run GiB"], rows)
    harness.print_table("ours vs naive",
                        ["config", "speed-up", "peak memory ratio", "ours of ceiling", "frame by frame: speed-up",
                         "frame by frame: memory ratio"],
                        [[n, f"{c['speedup']:.2f}x", f"{c['memory_ratio']:.2f}", f"{c['ceiling_fraction']:.0%}",
                          f"{c['frame_by_frame_speedup']:.2f}x" if "frame_by_frame_speedup" in c else "-",
                          f"{c['frame_by_frame_memory_ratio']:.2f}" if "frame_by_frame_memory_ratio" in c else "-"]
                         for n, c in results["configs"].items()])
    harness.print_table("mixed_bfloat16 against float32 (ours)", ["config", "speed-up", "peak memory / naive's"],
                        [[n, f"{c['bfloat16_speedup']:.2f}x",
                          f"{c['bfloat16_memory_ratio']:.2f}" if "bfloat16_memory_ratio" in c else "-"]
                         for n, c in results["configs"].items()])
    fusing = [[n, row, f"{c[f'{row} fused / separate speed-up']:.2f}x"] for n, c in results["configs"].items()
              for row in ("ours", BFLOAT16) if f"{row} fused / separate speed-up" in c]
    if fusing:
        harness.print_table("element-wise work fused by XLA against separate ops", ["config", "row", "speed-up"], fusing)
    for key, title in (("test_set", "float32"), ("test_set_bfloat16", "mixed_bfloat16")):
        test_set = results[key]
        harness.print_table(f"whole test set (290 scenes), sliding windows, ours in {title}",
                            ["n_slide", "ours scenes/h", "naive scenes/h", "ours hours", "naive hours"],
                            [[n, test_set[f"n_slide={n}"]["ours_scenes_per_hour"],
                              test_set[f"n_slide={n}"]["naive_scenes_per_hour"],
                              test_set[f"n_slide={n}"]["ours_test_set_hours"],
                              test_set[f"n_slide={n}"]["naive_test_set_hours"]] for n in (0, 2)])


def main(argv: list[str] | None = None) -> int:
    return harness.script_main(argv, __doc__, "forward",
                               lambda args: measure(QUICK if args.quick else FULL, args.repeats), report, repeats=3,
                               quick="tiny sizes, 8 features", child=runners.memory_child)


if __name__ == "__main__":
    sys.exit(main())
