"""GMFlow (Xu et al., CVPR 2022) built from the scaffold's parts: transformer features, global
matching over all pixels, flow propagation by self-attention, convex upsampling; optionally refined
at 1/4 by local matching on warped features."""

from learned.gmflow.model import SCALES, GMFlow, Scale

__all__ = ["GMFlow", "SCALES", "Scale"]
