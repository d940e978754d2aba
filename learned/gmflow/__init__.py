"""GMFlow (Xu et al., CVPR 2022) built from the scaffold's parts: transformer features, global
matching over all pixels, flow propagation by self-attention, convex upsampling."""

from learned.gmflow.model import GMFlow

__all__ = ["GMFlow"]
