"""RegNet tap accuracy on shifts planted in the features of real PROBA-V frames.

Central windows of bicubic-upsampled real LR frames (normalised with mu/sigma) go through a
pretrained SISRNet; 8 copies of each frame's features are moved by seeded random integer
shifts in [-4, 4] and RegNet must find each shift's filter tap. Compares checkpoint pairs,
e.g. ours (pretrained on synthetic data) against the authors' (pretrained on PROBA-V NIR):

    python bench/regnet_accuracy.py --data ../shared/data/probav_real/lr_only \\
        --pair ours pretraining_checkpoints/SISRNet_synthetic pretraining_checkpoints/RegNet_synthetic 16 \\
        --pair authors ../shared/reference/pretraining_checkpoints/SISRNet ../shared/reference/pretraining_checkpoints/RegNet 64

Prints a Markdown table (accuracy, accuracy of the opposite sign convention, share within one
pixel, number of planted shifts).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from libraries.training import pretraining, pretraining_data  # noqa: E402  (after the log level is set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="PROBA-V folder: SPLIT/BAND/imgsetNNNN/LR*.png")
    parser.add_argument("--pair", nargs=4, action="append", required=True,
                        metavar=("NAME", "SISRNET_DIR", "REGNET_DIR", "N_FEATURES"),
                        help="a SISRNet + RegNet checkpoint pair to measure (repeatable)")
    parser.add_argument("--size", type=int, default=96, help="side of the central window of each frame")
    parser.add_argument("--frames-per-scene", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the planted shifts")
    args = parser.parse_args()

    frames, names = pretraining_data.read_real_frames(args.data, args.size, args.frames_per_scene)
    print(f"{len(names)} real frames, {args.size}x{args.size} windows, 8 planted shifts each (seed {args.seed})\n")
    rows = ["| checkpoints | n_features | tap accuracy | opposite-sign accuracy | within 1 px | shifts | seconds |",
            "|---|---|---|---|---|---|---|"]
    for name, sisrnet_dir, regnet_dir, features in args.pair:
        start = time.perf_counter()
        result = pretraining.real_frame_accuracy(frames, sisrnet_dir, regnet_dir, int(features), seed=args.seed)
        rows.append(f"| {name} | {features} | {result['accuracy']:.3f} | {result['opposite_sign_accuracy']:.3f} | "
                    f"{result['within_one_pixel']:.3f} | {result['shifts']} | {time.perf_counter() - start:.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
