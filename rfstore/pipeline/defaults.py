"""The default value of every stage option, written once: the stages' config dataclasses take their
defaults from here, and the command line shows them in its help without loading the stages."""
from __future__ import annotations

from rfstore.rf.empirical import DEFAULT_THRESHOLD
from rfstore.stats.iou import DEFAULT_MIN_IOU

BATCH_SIZE = 64
"""Images per forward pass (activations, validate)."""
DEVICE = "auto"
"""auto | cpu | cuda | cuda:N | mps."""
MEMORY_FORMAT = "auto"
"""activations: channels_last on a CPU, contiguous elsewhere."""
K = 10
"""topk: images kept per unit."""
MEASURE = "max"
"""topk: rank images by the unit's spatial max (or mean)."""
OCCLUDER_SIZE = 11
"""occlude: occluder side in pixels (Zhou et al.'s 11)."""
OCCLUDER_STRIDE = 3
"""occlude: occluder stride in pixels (Zhou et al.'s 3)."""
OCCLUDER_FILL = "noise"
"""occlude: noise | zero | mean | a number."""
NOISE_SEED = 0
"""occlude: seed of the noise fill."""
OCCLUDER_DTYPE = "float32"
"""occlude: float32 (exact) | bfloat16 | float16."""
POSITIONS_PER_BATCH = 256
"""occlude: occluder positions per incremental batch (memory only: results do not depend on it)."""
IMAGES_PER_TASK = 16
"""occlude: distinct top images per Dask task."""
RF_THRESHOLD = DEFAULT_THRESHOLD
"""rf: the empirical RF is where rf_map >= threshold * max (the half-maximum)."""
RF_METHOD = "occlusion"
"""rf: occlusion (Zhou et al.) | gradient (Luo et al. 2016)."""
MIN_IOU = DEFAULT_MIN_IOU
"""dissect: smallest IoU for a label (NetDissect's)."""
MASKS = "rf"
"""dissect: rf (empirical-RF segmentations) | activation (thresholded activation maps)."""
NETDISSECT_BATCH_SIZE = 32
"""dissect --method netdissect: images per forward pass."""
CHECKPOINT_SECONDS = 60.0
"""dissect --method netdissect: save the quantiles' state at most this often."""
