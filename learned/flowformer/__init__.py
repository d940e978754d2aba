"""FlowFormer (Huang et al., ECCV 2022) built from the scaffold's parts: RAFT's encoders, an all-pairs
cost volume encoded by attention into a latent cost memory (the data term), a cost-memory query at
the current flow as the lookup, and RAFT's GRU update as the step."""

from learned.flowformer.model import flowformer

__all__ = ["flowformer"]
