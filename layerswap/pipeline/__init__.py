"""The demo and the evidence runs as a recipe (torchtune's recipes and their YAML configs are the model).

- :mod:`~layerswap.pipeline.config`: :class:`DemoConfig` (the budgets and every sweep setting) and
  the sweep it runs, laid over the checked-in ``sweep.yaml``
- :mod:`~layerswap.pipeline.stages`: resumable stages that record their seconds and peak memory
- :mod:`~layerswap.pipeline.experts`: the math and language experts
- :mod:`~layerswap.pipeline.checks`: each expert against the base on its own skill (registered tasks)
- :mod:`~layerswap.pipeline.outputs`: the output guard and the published figures
- :mod:`~layerswap.pipeline.report`: ``report.md``
- :mod:`~layerswap.pipeline.run`: :func:`run_demo`, the stages top to bottom

The arrows: ``cli`` -> ``pipeline`` -> ``sweep`` -> wings -> ``io``. Names load on first use so
that the CLI reads :class:`DemoConfig` without torch.
"""

from layerswap.lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "DemoConfig": "layerswap.pipeline.config",
        "sweep_config": "layerswap.pipeline.config",
        "train_experts": "layerswap.pipeline.experts",
        "demo_experts": "layerswap.pipeline.experts",
        "check_experts": "layerswap.pipeline.checks",
        "run_demo": "layerswap.pipeline.run",
    },
)
