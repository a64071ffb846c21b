"""The DeepSUM network: `hardware` (what the machine computes natively: CPU flags, GPUs, reduced-
precision kernels; the timing of the probes) -> `kernel_gradients` (the convolutions' kernel
gradients by oneDNN or XLA, whichever is faster here) -> `layers` (building blocks) -> `fusion`
(whether a layer's element-wise work runs as one XLA computation, measured), `strips` (whether
frame-by-frame convolutions run in strips, measured) and `networks` (SISRNet, RegNet, FusionNet) -> `deepsum`
(registration, fill and the whole network). The names below are the package's
public interface (`from libraries import model; model.DeepSUM(config)`)."""

from libraries.model.deepsum import (DeepSUM, InputError, fill_masked, fill_masked_frame_by_frame, register_frame_by_frame,
                                     register_frames)
from libraries.model.layers import (LEAKY_SLOPE, NORM_EPSILON, Conv, InstanceNorm, Network, conv2d, conv3d, frame_list,
                                    one_after_another, reflect_pad, sum_one_after_another)
from libraries.model.networks import FusionNet, RegNet, SISRNet

__all__ = ["DeepSUM", "InputError", "fill_masked", "fill_masked_frame_by_frame", "register_frame_by_frame",
           "register_frames", "LEAKY_SLOPE", "NORM_EPSILON", "Conv", "InstanceNorm", "Network", "conv2d", "conv3d",
           "frame_list", "one_after_another", "reflect_pad", "sum_one_after_another", "FusionNet", "RegNet", "SISRNet"]
