"""arflowbench: a benchmark and ablation suite for autoregressive flow-matching image generators."""

__version__ = "0.1.0"
